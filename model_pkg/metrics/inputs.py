"""Input checks shared by the metric modules: scores, 0/1 labels, thresholds between scores, sklearn.

Every metric validates its inputs the same way (1-D, non-empty, no NaN/inf, labels 0/1 with both classes) and
raises ``ValueError`` naming the problem; keeping the checks in one module keeps those messages identical.
``number_above`` and ``midpoint`` place a threshold strictly above a score or between two neighbouring scores
without overflowing at the ends of the float range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["as_binary_labels", "as_scores", "midpoint", "number_above", "sklearn_metrics"]


def sklearn_metrics() -> Any:
    """`sklearn.metrics`, imported on first use: its ~1 s import is not paid by every process that imports
    `model_pkg.metrics` (the app's cold start: the gallery and the models import this module)."""
    import sklearn.metrics

    return sklearn.metrics


def as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """``scores`` as a 1-D float64 array; ``ValueError`` (naming ``name``) when empty, NaN or infinite."""
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


def as_binary_labels(labels: Any, n: int | None = None, *, require_both: bool = True) -> np.ndarray:
    """``labels`` as a 1-D int64 array of 0/1 (booleans allowed), ``n`` long when given; with ``require_both``
    both classes must be present (the message names the missing one)."""
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


def number_above(x: float) -> float:
    """A finite number strictly greater than ``x`` (``x + 1`` when representable)."""
    y = x + 1.0
    if y > x and math.isfinite(y):
        return float(y)
    y = float(np.nextafter(x, np.inf))
    if not math.isfinite(y):  # x is the largest finite double
        raise ValueError("scores are too large to place a threshold above the maximum")
    return y


def midpoint(a: float, b: float) -> float:
    """Midpoint of a < b that is guaranteed to lie in (a, b]."""
    mid = a / 2.0 + b / 2.0  # no overflow for huge magnitudes
    if not (a < mid <= b):
        mid = b
    return float(mid)
