"""Evaluation metrics for petmatch models (the project's single metrics module).

Three families of numbers are computed here:

* **Verification** (``verification_metrics``, ``choose_threshold``, ``roc_pr_curves``):
  a model scores a *pair* of photo sets; label 1 means "same dog", 0 "different
  dogs".  A pair is predicted positive when ``score >= threshold``.  Scores may
  be probabilities, cosine similarities or any other real number where higher
  means "more likely the same dog".
* **Retrieval / identification** (``retrieval_metrics``): each query is ranked
  against a gallery by similarity; recall@k, mAP and MRR.
* **Open set** (``open_set_metrics``): how well a "known dog" score separates
  queries whose dog is in the gallery from queries whose dog is not.
* **Embedding-space alignment** (``alignment_metrics``): row ``i`` of vectors mapped from
  space A should be nearest to row ``i`` of the true space-B vectors, among all rows.

Plus ``confusion`` / ``save_confusion`` for classification-style confusion
matrices.  Every dict returned holds plain Python ``float``/``int``/``str``/
``list`` values so it can be passed to ``json.dumps`` directly.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .fileio import atomic_write

__all__ = [
    "choose_threshold",
    "choose_guarded_threshold",
    "verification_metrics",
    "roc_pr_curves",
    "retrieval_metrics",
    "text_image_retrieval_metrics",
    "open_set_metrics",
    "alignment_metrics",
    "confusion",
    "save_confusion",
]

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- #
# Input validation helpers
# --------------------------------------------------------------------------- #


def _sklearn_metrics() -> Any:
    """`sklearn.metrics`, imported on first use: its ~1 s import is not paid by every process that imports
    `model_pkg.metrics` (the app's cold start: the gallery and the models import this module)."""
    import sklearn.metrics

    return sklearn.metrics


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s)")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains {int(np.isinf(arr).sum())} infinite value(s)")
    return arr


def _as_binary_labels(labels: Any, n: int | None = None, *, require_both: bool = True) -> np.ndarray:
    raw = np.asarray(labels)
    if raw.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {raw.shape}")
    if raw.size == 0:
        raise ValueError("labels is empty")
    if n is not None and raw.size != n:
        raise ValueError(f"labels and scores have different lengths: {raw.size} labels vs {n} scores")
    try:
        as_float = raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"labels must be 0/1 (or booleans), got dtype {raw.dtype}") from exc
    bad = ~np.isin(as_float, (0.0, 1.0))
    if bad.any():
        examples = sorted({str(v) for v in raw[bad][:5]})
        raise ValueError(f"labels must be 0/1 (or booleans); found other values such as {examples}")
    out = as_float.astype(np.int64)
    if require_both:
        n_pos = int(out.sum())
        if n_pos == 0:
            raise ValueError(
                f"only one class present in labels: all {out.size} are 0 (negative / different dog); "
                "need at least one positive (1) and one negative (0)"
            )
        if n_pos == out.size:
            raise ValueError(
                f"only one class present in labels: all {out.size} are 1 (positive / same dog); "
                "need at least one positive (1) and one negative (0)"
            )
    return out


def _above(x: float) -> float:
    """A finite number strictly greater than ``x`` (``x + 1`` when representable)."""
    y = x + 1.0
    if y > x and math.isfinite(y):
        return float(y)
    y = float(np.nextafter(x, np.inf))
    if not math.isfinite(y):  # x is the largest finite double
        raise ValueError("scores are too large to place a threshold above the maximum")
    return y


def _midpoint(a: float, b: float) -> float:
    """Midpoint of a < b that is guaranteed to lie in (a, b]."""
    mid = a / 2.0 + b / 2.0  # no overflow for huge magnitudes
    if not (a < mid <= b):
        mid = b
    return float(mid)


# --------------------------------------------------------------------------- #
# Verification
# --------------------------------------------------------------------------- #
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
    s = _as_scores(scores)
    y = _as_binary_labels(labels, s.size)
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
        return _above(float(uniq[-1]))
    return _midpoint(float(uniq[j - 1]), float(uniq[j]))


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
    s, y = _as_scores(scores), _as_binary_labels(labels, np.size(scores))
    gs, gy = _as_scores(guard_scores), _as_binary_labels(guard_labels, np.size(guard_scores))
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance={tolerance} must lie in [0, 1).")
    points = np.unique(np.concatenate([s, gs]))
    middle = [_midpoint(float(a), float(b)) for a, b in zip(points[:-1], points[1:])]
    candidates = np.array([float(points[0]), *middle, _above(float(points[-1]))])

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
    s = _as_scores(scores)
    y = _as_binary_labels(labels, s.size)
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
    skm = _sklearn_metrics()
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
    s = _as_scores(scores)
    y = _as_binary_labels(labels, s.size)
    top = _above(float(s.max()))
    fpr, tpr, roc_thr = _sklearn_metrics().roc_curve(y, s)
    roc_thr = np.where(np.isfinite(roc_thr), roc_thr, top)
    precision, recall, pr_thr = _sklearn_metrics().precision_recall_curve(y, s)
    pr_thr = np.where(np.isfinite(pr_thr), pr_thr, top)
    return {
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
        "roc_thresholds": [float(v) for v in roc_thr],
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "pr_thresholds": [float(v) for v in pr_thr],
    }


# --------------------------------------------------------------------------- #
# Retrieval / identification
# --------------------------------------------------------------------------- #
def retrieval_metrics(
    query_labels: Sequence[Any] | np.ndarray,
    gallery_labels: Sequence[Any] | np.ndarray,
    similarity: np.ndarray,
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Gallery retrieval metrics (identify a query dog among gallery photos).

    ``similarity[q, g]`` is the score of gallery item ``g`` for query ``q``
    (higher = more similar).  Each query's gallery is ranked by descending
    similarity; exact ties keep gallery order (stable sort), so results are
    deterministic.  Labels may be ints or strings (dog identities).

    Keys:

    * ``r{k}`` for each k in ``ks`` -- recall@k in **percent** (0-100): the share
      of queries whose top-k gallery items contain at least one item with the
      query's label (k larger than the gallery means "whole gallery").
    * ``map`` -- mean average precision in [0, 1]: per query, the mean of
      precision@rank over the ranks of all same-label gallery items, averaged
      over queries.
    * ``mrr`` -- mean reciprocal rank in [0, 1]: average of 1/(rank of the first
      same-label gallery item).
    * ``num_queries`` -- queries that count (have >= 1 match in the gallery).
    * ``num_queries_without_match`` -- queries whose label is absent from the
      gallery; they are excluded from every metric above.

    Raises ``ValueError`` on shape mismatch, NaN similarities, bad ``ks`` or when
    no query has a match in the gallery.
    """
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    sim = np.asarray(similarity, dtype=np.float64)
    if q.ndim != 1 or g.ndim != 1:
        raise ValueError(f"query_labels and gallery_labels must be 1-D, got shapes {q.shape} and {g.shape}")
    if q.size == 0 or g.size == 0:
        raise ValueError(f"need at least one query and one gallery item, got {q.size} and {g.size}")
    if sim.shape != (q.size, g.size):
        raise ValueError(f"similarity must have shape (num_queries, num_gallery) = ({q.size}, {g.size}), got {sim.shape}")
    if np.isnan(sim).any():
        raise ValueError(f"similarity contains {int(np.isnan(sim).sum())} NaN value(s)")
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}")

    matches = q[:, None] == g[None, :]  # (Q, G) bool
    has_match = matches.any(axis=1)
    n_without = int((~has_match).sum())
    if not has_match.any():
        raise ValueError(f"none of the {q.size} queries has a gallery item with the same label")
    order = np.argsort(-sim[has_match], axis=1, kind="stable")
    rel = np.take_along_axis(matches[has_match], order, axis=1)  # relevance in ranked order
    n_q, n_g = rel.shape

    first_hit = rel.argmax(axis=1)  # 0-based rank of the first correct item (exists)
    out: dict[str, Any] = {}
    for k in ks:
        out[f"r{k}"] = float(100.0 * np.mean(first_hit < k))
    hits_cum = np.cumsum(rel, axis=1)
    prec_at = hits_cum / np.arange(1, n_g + 1)[None, :]
    ap = (prec_at * rel).sum(axis=1) / rel.sum(axis=1)
    out["map"] = float(ap.mean())
    out["mrr"] = float(np.mean(1.0 / (first_hit + 1)))
    out["num_queries"] = int(n_q)
    out["num_queries_without_match"] = n_without
    return out


def text_image_retrieval_metrics(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    text_image_index: Sequence[int] | np.ndarray,
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Cross-modal retrieval (DESIGN.md's text-search protocol: every image against all captions).

    ``image_embeds`` (N_img, E) and ``text_embeds`` (N_txt, E) are compared by dot product (cosine for
    L2-normalised embeddings); ``text_image_index[t]`` is the row of caption ``t``'s image. Returns
    ``{"text_to_image": {...}, "image_to_text": {...}}`` with ``r{k}`` in percent and ``mrr`` in [0, 1]
    (from :func:`retrieval_metrics`): a caption's query succeeds when its own image is in the top k;
    an image's query when any of its captions is.
    """
    img = np.asarray(image_embeds, dtype=np.float32)
    txt = np.asarray(text_embeds, dtype=np.float32)
    owner = np.asarray(text_image_index, dtype=np.int64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_embeds (N, E) and text_embeds (M, E) must share E, got {img.shape} and {txt.shape}")
    if owner.shape != (txt.shape[0],):
        raise ValueError(f"text_image_index must hold one image row per caption ({txt.shape[0]}), got shape {owner.shape}")
    if owner.size and (owner.min() < 0 or owner.max() >= img.shape[0]):
        raise ValueError(f"text_image_index values must lie in [0, {img.shape[0]}), got {owner.min()}..{owner.max()}")
    sim = txt @ img.T  # (M, N)
    rows = np.arange(img.shape[0])
    keys = [f"r{k}" for k in ks] + ["mrr"]
    t2i = retrieval_metrics(owner, rows, sim, ks)
    i2t = retrieval_metrics(rows, owner, sim.T, ks)
    return {"text_to_image": {k: t2i[k] for k in keys}, "image_to_text": {k: i2t[k] for k in keys}}


# --------------------------------------------------------------------------- #
# Open set
# --------------------------------------------------------------------------- #
def open_set_metrics(
    known_scores: Sequence[float] | np.ndarray,
    unknown_scores: Sequence[float] | np.ndarray,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Open-set recognition: does the "known" score separate known from unknown dogs?

    ``known_scores`` are scores of queries whose dog *is* in the gallery,
    ``unknown_scores`` of queries whose dog is not; higher score = "more known"
    (e.g. the best gallery similarity).

    Keys:

    * ``open_set_auroc`` -- ROC AUC with known = positive class (1.0 = perfect
      separation, 0.5 = chance).
    * ``num_known``, ``num_unknown`` -- counts.
    * only when ``threshold`` is given: ``threshold``; ``known_acceptance`` --
      fraction of known queries with score >= threshold (accepted as known);
      ``unknown_rejection`` -- fraction of unknown queries with score < threshold
      (rejected as unknown).
    """
    k = _as_scores(known_scores, "known_scores")
    u = _as_scores(unknown_scores, "unknown_scores")
    y = np.concatenate([np.ones(k.size, dtype=np.int64), np.zeros(u.size, dtype=np.int64)])
    out: dict[str, Any] = {
        "open_set_auroc": float(_sklearn_metrics().roc_auc_score(y, np.concatenate([k, u]))),
        "num_known": int(k.size),
        "num_unknown": int(u.size),
    }
    if threshold is not None:
        t = float(threshold)
        if math.isnan(t):
            raise ValueError("threshold is NaN")
        out["threshold"] = t
        out["known_acceptance"] = float(np.mean(k >= t))
        out["unknown_rejection"] = float(np.mean(u < t))
    return out


# --------------------------------------------------------------------------- #
# Embedding-space alignment
# --------------------------------------------------------------------------- #
def alignment_metrics(mapped: Any, targets: Any, chunk_size: int = 2048) -> dict[str, Any]:
    """How well vectors mapped into space B find their own true B vector (vec2vec's protocol).

    ``mapped[i]`` (A's embedding of item i, mapped into B) is compared by cosine similarity with
    every row of ``targets`` (B's embeddings of the same N items, row i = item i).

    Keys:

    * ``top1`` -- share of rows whose own target is the most similar of the N candidates.
    * ``mean_rank`` -- mean rank of the own target (1 = best; a tie counts in the row's favour).
    * ``mean_cosine`` -- mean cosine similarity between ``mapped[i]`` and ``targets[i]``.
    * ``num`` -- N, the number of items and of candidates.

    Raises ``ValueError`` on shape mismatch, fewer than 2 rows, NaN/inf or zero rows.
    """
    a = np.asarray(mapped, dtype=np.float32)
    b = np.asarray(targets, dtype=np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"mapped and targets must both be (N, D) arrays of the same shape (row i = the same item), "
            f"got {a.shape} and {b.shape}"
        )
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 items to rank candidates, got {a.shape[0]}")
    norms = []
    for name, x in (("mapped", a), ("targets", b)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        n = np.linalg.norm(x, axis=1, keepdims=True)
        if (n == 0).any():
            raise ValueError(f"{name} row(s) {np.flatnonzero(n[:, 0] == 0)[:10].tolist()} are zero vectors")
        norms.append(n)
    a, b = a / norms[0], b / norms[1]
    n = a.shape[0]
    own = np.empty(n, dtype=np.float32)
    ranks = np.empty(n, dtype=np.int64)
    for i in range(0, n, chunk_size):
        sim = a[i : i + chunk_size] @ b.T  # (chunk, N)
        rows = np.arange(sim.shape[0])
        own[i : i + chunk_size] = sim[rows, i + rows]  # from the same product, so rounding cannot demote it
        ranks[i : i + chunk_size] = 1 + (sim > own[i : i + chunk_size, None]).sum(axis=1)
    return {
        "top1": float(np.mean(ranks == 1)),
        "mean_rank": float(ranks.mean()),
        "mean_cosine": float(own.mean()),
        "num": int(a.shape[0]),
    }


# --------------------------------------------------------------------------- #
# Confusion matrix
# --------------------------------------------------------------------------- #
def confusion(labels_true: Sequence[Any], labels_pred: Sequence[Any], labels: list[Any]) -> np.ndarray:
    """Confusion matrix (sklearn ``confusion_matrix``) with a fixed label order.

    ``matrix[i, j]`` = number of samples whose true label is ``labels[i]`` and
    predicted label is ``labels[j]`` (rows = truth, columns = prediction).
    Samples whose true or predicted label is not in ``labels`` are not counted.
    """
    if len(labels_true) != len(labels_pred):
        raise ValueError(f"labels_true and labels_pred have different lengths: {len(labels_true)} vs {len(labels_pred)}")
    if len(labels) == 0:
        raise ValueError("labels must list at least one class")
    if len(set(labels)) != len(labels):
        raise ValueError("labels contains duplicates")
    return _sklearn_metrics().confusion_matrix(list(labels_true), list(labels_pred), labels=list(labels))


def save_confusion(
    matrix: np.ndarray,
    labels: Sequence[Any],
    csv_path: PathLike,
    png_path: PathLike | None = None,
) -> None:
    """Write a confusion matrix to CSV (and optionally a PNG heat map), atomically.

    CSV layout: first row ``true\\pred, label_1, ..., label_n``; then one row per
    true label: ``label_i, count_i1, ..., count_in``.  The PNG is rendered with
    matplotlib's Agg canvas (no display needed, global pyplot state untouched).
    Each file is written to a temporary file in the same directory and moved in
    place with ``os.replace``.
    """
    m = np.asarray(matrix)
    labels = list(labels)
    if m.ndim != 2 or m.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix must have shape ({len(labels)}, {len(labels)}) to match labels, got {m.shape}")
    is_int = np.issubdtype(m.dtype, np.integer)

    def fmt(v: Any) -> str:
        return str(int(v)) if is_int else repr(float(v))

    def write_csv(fh) -> None:
        w = csv.writer(fh)
        w.writerow(["true\\pred", *[str(lab) for lab in labels]])
        for lab, row in zip(labels, m):
            w.writerow([str(lab), *[fmt(v) for v in row]])

    atomic_write(csv_path, write_csv)

    if png_path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n = len(labels)
        # a gallery of a few hundred dogs must still give a readable, bounded image: past 60 labels the
        # cells shrink, tick labels go (the CSV has them) and the figure stops growing at 20 inches
        size = min(20.0, max(4.0, 0.5 * n + 2.0))
        fig = Figure(figsize=(size, size))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        # one big cell (e.g. every unknown query on the unknown row) would wash a large matrix out to
        # white: past 30 labels the colours show log(1 + count) so the diagonal stays visible
        shown = m.astype(np.float64) if n <= 30 else np.log1p(np.maximum(m.astype(np.float64), 0.0))
        im = ax.imshow(shown, cmap="Blues", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="count" if n <= 30 else "log(1 + count)")
        if n <= 60:
            ax.set_xticks(range(n))
            ax.set_yticks(range(n))
            ax.set_xticklabels([str(lab) for lab in labels], rotation=45, ha="right")
            ax.set_yticklabels([str(lab) for lab in labels])
        else:
            ax.set_title(f"{n} labels (names in the CSV, same order)")
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        if n <= 30:
            vmax = float(m.max()) if m.size else 0.0
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        fmt(m[i, j]) if is_int else f"{float(m[i, j]):.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if vmax > 0 and float(m[i, j]) > vmax / 2 else "black",
                    )
        fig.tight_layout()
        atomic_write(png_path, lambda fh: fig.savefig(fh, format="png", dpi=100), binary=True)
