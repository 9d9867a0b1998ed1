"""Pair verification ("same dog?"): thresholds, thresholded metrics and ROC / PR curves.

A model scores a *pair* of photo sets; label 1 means "same dog", 0 "different dogs".  A pair is predicted
positive when ``score >= threshold``.  Scores may be probabilities, cosine similarities or any other real
number where higher means "more likely the same dog".  Separate from retrieval because it works on scored
pairs, not on a ranked gallery.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .inputs import as_binary_labels, as_scores, midpoint, number_above, sklearn_metrics

__all__ = ["choose_guarded_threshold", "choose_threshold", "roc_pr_curves", "verification_metrics"]


def choose_threshold(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Threshold that maximises accuracy of ``score >= threshold`` on (validation) data.

    Candidates are: the smallest score (everything predicted positive), the
    midpoints between each pair of neighbouring distinct sorted scores, and a
    value above the largest score (``max + 1``; everything predicted negative).
    The candidate with the highest number of correct predictions wins; ties go
    to the smallest candidate, so the result is deterministic.  Works for any
    real score range (probabilities, cosine similarities, logits, ...).

    Choose it on a validation split and pass it as ``threshold`` to
    :func:`verification_metrics` on the test split; choosing on test data gives
    an optimistic ("oracle") accuracy.

    Raises ``ValueError`` on length mismatch, NaN/inf scores, non-0/1 labels,
    or when only one class is present.
    """
    s = as_scores(scores)
    y = as_binary_labels(labels, s.size)
    uniq, inverse = np.unique(s, return_inverse=True)
    pos_per = np.bincount(inverse, weights=y, minlength=uniq.size).astype(np.int64)
    neg_per = np.bincount(inverse, weights=1 - y, minlength=uniq.size).astype(np.int64)
    # candidate j (0..U): predict positive iff unique index >= j
    neg_below = np.concatenate([[0], np.cumsum(neg_per)])
    pos_below = np.concatenate([[0], np.cumsum(pos_per)])
    correct = neg_below + (int(y.sum()) - pos_below)
    j = int(np.argmax(correct))  # first maximum = smallest threshold
    if j == 0:
        return float(uniq[0])
    if j == uniq.size:
        return number_above(float(uniq[-1]))
    return midpoint(float(uniq[j - 1]), float(uniq[j]))


def choose_guarded_threshold(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    guard_labels: Sequence[int] | np.ndarray,
    guard_scores: Sequence[float] | np.ndarray,
    tolerance: float,
) -> float:
    """The threshold that decides best on the guard pairs among those within `tolerance` (a fraction, e.g.
    0.005 = half a point) of the best accuracy on the main pairs.

    For pair verification: main = validation pairs with random negatives (what users meet), guard = pairs
    with hard (lookalike) negatives. On random negatives accuracy is flat over a wide range of thresholds
    and `choose_threshold` takes the lowest, which lets lookalikes through; this takes the one in that
    range that also holds up against lookalikes. Ties go to the smallest candidate."""
    s, y = as_scores(scores), as_binary_labels(labels, np.size(scores))
    gs, gy = as_scores(guard_scores), as_binary_labels(guard_labels, np.size(guard_scores))
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance={tolerance} must lie in [0, 1).")
    points = np.unique(np.concatenate([s, gs]))
    middle = [midpoint(float(a), float(b)) for a, b in zip(points[:-1], points[1:])]
    candidates = np.array([float(points[0]), *middle, number_above(float(points[-1]))])

    def accuracy(y_: np.ndarray, s_: np.ndarray) -> np.ndarray:
        order = np.sort(s_[y_ == 0]), np.sort(s_[y_ == 1])
        negatives_below = np.searchsorted(order[0], candidates, side="left")
        positives_at_or_above = len(order[1]) - np.searchsorted(order[1], candidates, side="left")
        return (negatives_below + positives_at_or_above) / len(y_)

    main, guard = accuracy(y, s), accuracy(gy, gs)
    allowed = main >= main.max() - tolerance - 1e-12
    return float(candidates[int(np.argmax(np.where(allowed, guard, -1.0)))])


def verification_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Pair-verification metrics ("same dog?"), JSON-serialisable.

    Keys:

    * ``accuracy`` -- fraction of pairs classified correctly by ``score >= threshold``.
    * ``precision`` -- of the pairs predicted "same dog", the fraction that are (0 if none predicted).
    * ``recall`` -- of the true "same dog" pairs, the fraction predicted as such.
    * ``f1`` -- harmonic mean of precision and recall at the threshold.
    * ``threshold`` -- the decision threshold used.
    * ``threshold_source`` -- ``"given"`` if ``threshold`` was passed, else
      ``"oracle"``: chosen by :func:`choose_threshold` on *this* data, so the
      thresholded numbers are optimistic.
    * ``roc_auc`` -- area under the ROC curve (threshold-free; 0.5 = chance).
    * ``pr_auc`` -- average precision (sklearn ``average_precision_score``), the
      area under the precision-recall curve with positives = "same dog".
    * ``best_accuracy`` -- accuracy at the oracle threshold on this data (upper
      reference for ``accuracy``).
    * ``num_pairs``, ``num_positive``, ``num_negative`` -- counts.

    Raises ``ValueError`` when only one class is present (naming it), lengths
    differ, scores contain NaN/inf, or labels are not 0/1.
    """
    s = as_scores(scores)
    y = as_binary_labels(labels, s.size)
    oracle = choose_threshold(y, s)
    if threshold is None:
        thr, source = oracle, "oracle"
    else:
        thr = float(threshold)
        if math.isnan(thr):
            raise ValueError("threshold is NaN")
        source = "given"
    pred = (s >= thr).astype(np.int64)
    best_pred = (s >= oracle).astype(np.int64)
    skm = sklearn_metrics()
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "threshold": float(thr),
        "threshold_source": source,
        "roc_auc": float(skm.roc_auc_score(y, s)),
        "pr_auc": float(skm.average_precision_score(y, s)),
        "best_accuracy": float(skm.accuracy_score(y, best_pred)),
        "num_pairs": int(y.size),
        "num_positive": int(y.sum()),
        "num_negative": int(y.size - y.sum()),
    }


def roc_pr_curves(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> dict[str, list[float]]:
    """ROC and precision-recall curves as JSON-serialisable lists of finite floats.

    * ``fpr``, ``tpr``, ``roc_thresholds`` -- from sklearn ``roc_curve``
      (same length; point i is "predict positive when score >= roc_thresholds[i]").
      sklearn's first threshold (``inf``, nothing predicted positive) is
      replaced by ``max(scores) + 1``.
    * ``precision``, ``recall``, ``pr_thresholds`` -- from sklearn
      ``precision_recall_curve``; ``precision``/``recall`` have one more entry
      than ``pr_thresholds`` (the final point precision=1, recall=0 has no
      threshold), exactly as in sklearn.
    """
    s = as_scores(scores)
    y = as_binary_labels(labels, s.size)
    top = number_above(float(s.max()))
    fpr, tpr, roc_thr = sklearn_metrics().roc_curve(y, s)
    roc_thr = np.where(np.isfinite(roc_thr), roc_thr, top)
    precision, recall, pr_thr = sklearn_metrics().precision_recall_curve(y, s)
    pr_thr = np.where(np.isfinite(pr_thr), pr_thr, top)
    return {
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
        "roc_thresholds": [float(v) for v in roc_thr],
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "pr_thresholds": [float(v) for v in pr_thr],
    }
