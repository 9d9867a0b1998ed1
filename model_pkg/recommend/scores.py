"""Cheap transferability scores of frozen features for a labelled sample: LogME, kNN leave-one-out, rank average.

* `logme`: the log marginal evidence of a Bayesian linear model from features to targets, maximised
  over its prior and noise precisions by the fixed-point iteration of You et al., "LogME: Practical
  Assessment of Pre-trained Models for Transfer Learning" (ICML 2021), Algorithm 2. One SVD of the
  features serves every target column; all columns iterate together. Class labels become one-hot
  columns (the paper's classification form); a float matrix is regressed directly (its regression form).
* `knn_loo_score`: leave-one-out k-nearest-neighbour accuracy under cosine similarity (faiss); for float
  targets, the mean cosine between each item's target and the mean target of its k nearest neighbours.
* `rank_average`: the combination: each candidate's mean rank over several scores, as a score
  (higher is better).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import faiss
import numpy as np
from scipy.stats import rankdata

__all__ = ["ScoreInputError", "check_features", "knn_loo_score", "logme", "logme_evidence", "rank_average"]


class ScoreInputError(ValueError):
    """Features or targets that no score can be computed from (NaN, too few items or classes, bad shapes)."""


def check_features(features, name: str = "features") -> np.ndarray:
    """(N, D) finite float features, N >= 2, as float64; a clear `ScoreInputError` otherwise."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ScoreInputError(f"{name} must be a 2-D (items, dims) array, got shape {f.shape}.")
    if f.shape[0] < 2 or f.shape[1] < 1:
        raise ScoreInputError(f"{name} has shape {f.shape}: need at least 2 items and 1 dimension.")
    bad = ~np.isfinite(f)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ScoreInputError(
            f"{name} contain {int(bad.sum())} NaN/infinite values in {len(rows)} of {len(f)} rows (e.g. rows "
            f"{rows[:5].tolist()}): the backbone produced invalid features; check the images and the model's weights."
        )
    return f


def _targets(targets, n: int) -> tuple[np.ndarray, bool]:
    """Labels (N,) -> one-hot (N, K) with `True`; float (N, K) -> itself with `False`."""
    t = np.asarray(targets)
    if t.shape[0] != n:
        raise ScoreInputError(f"{t.shape[0]} targets for {n} feature rows: give one label (or target row) per item.")
    if t.ndim == 1:
        classes, index = np.unique(t, return_inverse=True)
        if len(classes) < 2:
            raise ScoreInputError(
                f"All {n} items have the same label {classes[0]!r}: scores need at least 2 classes (identities)."
            )
        return np.eye(len(classes))[index], True
    if t.ndim == 2:
        t = t.astype(np.float64)
        if not np.isfinite(t).all():
            raise ScoreInputError("Regression targets contain NaN or infinite values.")
        return t, False
    raise ScoreInputError(f"targets must be labels (N,) or a target matrix (N, K), got shape {t.shape}.")


def logme_evidence(features: np.ndarray, y: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Per-sample log evidence log p(y | F, alpha, beta) / N of each target column, computed directly
    (a reference for `logme` and its tests). `y` (N, K), `alpha`, `beta` (K,)."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    out = []
    for k in range(y.shape[1]):
        a, b = float(alpha[k]), float(beta[k])
        precision = a * np.eye(d) + b * f.T @ f  # (D, D)
        m = b * np.linalg.solve(precision, f.T @ y[:, k])  # posterior mean (D,)
        res2 = float(np.sum((f @ m - y[:, k]) ** 2))
        _, logdet = np.linalg.slogdet(precision)
        ev = n / 2 * np.log(b) + d / 2 * np.log(a) - n / 2 * np.log(2 * np.pi) - b / 2 * res2 - a / 2 * float(m @ m) - logdet / 2
        out.append(ev / n)
    return np.array(out)


def logme(features, targets, max_iter: int = 100, tol: float = 1e-6, min_ratio: float = 1e-5, return_params: bool = False):
    """LogME of `features` (N, D) for `targets`: labels (N,) or a float matrix (N, K); higher is better.

    The mean over target columns of the maximised per-sample log evidence. `return_params=True` also
    returns the fitted `alpha`, `beta` (K,) per column. `min_ratio` bounds alpha / beta from below
    (relative to the largest eigenvalue of F^T F); it only binds when the features can fit the targets
    exactly (typically N <= D), where the unbounded evidence would diverge.
    """
    f = check_features(features)
    y, _ = _targets(targets, f.shape[0])
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)  # u (N, R), s (R,), R = min(N, D)
    sigma = (s**2)[:, None]  # (R, 1): eigenvalues of F^T F; the D - R others are 0
    z = u.T @ y  # (R, K): targets in the left singular basis
    outside = np.maximum((y**2).sum(axis=0) - (z**2).sum(axis=0), 0.0)  # (K,) part of y no feature reaches
    alpha = np.ones(y.shape[1])
    beta = np.ones(y.shape[1])
    sigma_max = max(float(sigma.max()), 1e-300)
    for _ in range(max_iter):
        denom = alpha + beta * sigma  # (R, K)
        gamma = (beta * sigma / denom).sum(axis=0)  # effective number of parameters
        m2 = ((beta * s[:, None] * z / denom) ** 2).sum(axis=0)  # |m|^2
        res2 = ((alpha * z / denom) ** 2).sum(axis=0) + outside  # |F m - y|^2
        new_alpha = gamma / np.maximum(m2, 1e-300)
        new_beta = (n - gamma) / np.maximum(res2, 1e-300)
        # With fewer items than dimensions the features can interpolate the targets and beta (noise
        # precision) runs off to infinity; keep alpha / beta >= min_ratio * the largest eigenvalue.
        new_beta = np.minimum(new_beta, new_alpha / (min_ratio * sigma_max))
        ratio_old, ratio_new = alpha / beta, new_alpha / new_beta
        alpha, beta = new_alpha, new_beta
        if np.all(np.abs(ratio_new - ratio_old) <= tol * ratio_old):
            break
    denom = alpha + beta * sigma
    m2 = ((beta * s[:, None] * z / denom) ** 2).sum(axis=0)
    res2 = ((alpha * z / denom) ** 2).sum(axis=0) + outside
    logdet = np.log(denom).sum(axis=0) + (d - len(s)) * np.log(alpha)
    evidence = (
        n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2
    ) / n  # (K,)
    score = float(evidence.mean())
    if not np.isfinite(score):
        raise ScoreInputError(f"LogME is not finite ({score}): the features are degenerate (e.g. all zero or constant).")
    return (score, alpha, beta) if return_params else score


def knn_loo_score(features, targets, k: int = 1) -> float:
    """Leave-one-out kNN under cosine similarity: accuracy in [0, 1] for labels (majority vote of the k
    nearest others, ties to the nearer), or for float targets the mean cosine between each item's target
    and the mean target of its k nearest others."""
    f = check_features(features).astype(np.float32)
    y, is_labels = _targets(targets, f.shape[0])
    n = f.shape[0]
    if not 1 <= k < n:
        raise ScoreInputError(f"k must be between 1 and {n - 1} (items - 1), got {k}.")
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(f.shape[1])
    index.add(f)
    _, nn = index.search(f, k + 1)  # (N, k + 1), usually self first
    others = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        row = nn[i][nn[i] != i]
        others[i] = row[:k] if len(row) >= k else nn[i][1 : k + 1]
    if is_labels:
        weights = 1.0 + 1e-6 * np.arange(k, 0, -1)  # equal votes; ties go to the nearer neighbour
        votes = (y[others] * weights[None, :, None]).sum(axis=1)  # (N, C)
        return float(np.mean(votes.argmax(axis=1) == y.argmax(axis=1)))
    pred = y[others].mean(axis=1)  # (N, K)
    cos = (pred * y).sum(axis=1) / np.maximum(np.linalg.norm(pred, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
    return float(cos.mean())


def rank_average(scores: Mapping[str, Sequence[float]]) -> np.ndarray:
    """{score name: one value per candidate} -> the negated mean rank of each candidate (rank 1 = best,
    ties share their mean rank), so that higher is better like the scores it combines."""
    if not scores:
        raise ScoreInputError("rank_average needs at least one score.")
    lengths = {len(v) for v in scores.values()}
    if len(lengths) != 1:
        raise ScoreInputError(f"Every score needs one value per candidate; got lengths {sorted(lengths)}.")
    ranks = [rankdata(-np.asarray(v, dtype=np.float64)) for v in scores.values()]
    return -np.mean(ranks, axis=0)
