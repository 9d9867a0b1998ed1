"""Checks of what callers hand the gallery: its settings, embeddings and queries, new ids and metadata.

Everything here runs before anything is stored, so a call that fails leaves the gallery unchanged, and
each error names the bad value and what to do about it.  Separate from the vector store (``index``),
which then only keeps rows and searches them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .common import ZERO_NORM, GalleryMismatchError, check_strings

__all__ = ["check_metadata", "check_settings", "check_thresholds", "new_row_ids", "prepare_vectors"]


def check_settings(
    dim: Any,
    metric: str,
    approximate_above: Any,
    model_id: Any,
    approximate_index: str,
    ef_search: Any,
    ef_construction: Any,
) -> None:
    """``ValueError`` for the first bad :class:`~model_pkg.gallery.index.VectorStore` constructor argument."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer (embedding size), got {dim!r}")
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' (cosine) or 'l2', got {metric!r}")
    if isinstance(approximate_above, bool) or not isinstance(approximate_above, (int, np.integer)) or approximate_above < 0:
        raise ValueError(f"approximate_above must be an integer >= 0, got {approximate_above!r}")
    if model_id is not None and not isinstance(model_id, str):
        raise ValueError(f"model_id must be a string or None, got {type(model_id).__name__}")
    if approximate_index not in ("auto", "hnsw", "ivf_flat", "ivf_pq"):
        raise ValueError(f"approximate_index must be 'auto', 'hnsw', 'ivf_flat' or 'ivf_pq', got {approximate_index!r}")
    for name, v in (("ef_search", ef_search), ("ef_construction", ef_construction)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def check_thresholds(score_threshold: float | None, margin_threshold: float) -> None:
    """``ValueError`` for a NaN threshold of :class:`~model_pkg.gallery.GalleryIndex` (checked after the store's settings)."""
    if score_threshold is not None and math.isnan(float(score_threshold)):
        raise ValueError("score_threshold is NaN: pass a number, or None to never reject as unknown")
    if math.isnan(float(margin_threshold)):
        raise ValueError("margin_threshold is NaN: pass a number in [0, 1]")


def prepare_vectors(x: Any, dim: int, metric: str, model_id: str | None, what: str) -> np.ndarray:
    """float32, 2-D, C-contiguous, finite, non-zero; L2-normalised for "ip" (never in place).

    ``what`` names the argument in the errors (``"embeddings"``, ``"queries"``, ...)."""
    try:
        arr = np.array(x, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a numeric array of shape (N, {dim}): {exc}") from exc
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array of shape (N, {dim}), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} has no rows: pass at least one vector of dimension {dim}")
    if arr.shape[1] != dim:
        raise GalleryMismatchError(
            f"{what} have dimension {arr.shape[1]} but this gallery holds {dim}-dimensional vectors "
            f"(model_id={model_id!r}): the gallery was built with another embedder. "
            "Rebuild the gallery with this model, or use the model that built the gallery."
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(
            f"{what} row(s) {rows[:10].tolist()}{' ...' if rows.size > 10 else ''} contain NaN or infinite "
            "values: the embedder produced invalid output for those photos; check the photos/model and "
            "embed them again (nothing was changed)"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))
    zero = norms <= ZERO_NORM
    if zero.any():
        rows = np.flatnonzero(zero)
        raise ValueError(
            f"{what} row(s) {rows[:10].tolist()}{' ...' if rows.size > 10 else ''} are zero vectors, "
            "which carry no identity and cannot be normalised: embed those photos again or drop them "
            "(nothing was changed)"
        )
    if metric == "ip":
        arr /= norms[:, None].astype(np.float32)
    return np.ascontiguousarray(arr)


def new_row_ids(ids: Sequence[str] | None, n: int, existing: set[str], next_id: int) -> tuple[list[str], int]:
    """The ids of ``n`` new rows and the next running number.

    ``ids=None``: running numbers from ``next_id``, skipping those in ``existing``; otherwise ``ids``,
    which must be unique and new (``ValueError`` listing the repeats and clashes)."""
    if ids is None:
        new_ids, nxt = [], next_id
        for _ in range(n):
            while str(nxt) in existing:
                nxt += 1
            new_ids.append(str(nxt))
            nxt += 1
        return new_ids, nxt
    new_ids = check_strings(ids, n, "ids")
    dup = len(set(new_ids)) != n
    clash = sorted(set(new_ids) & existing)
    if dup or clash:
        seen, repeated = set(), []
        for v in new_ids:
            if v in seen:
                repeated.append(v)
            seen.add(v)
        raise ValueError(
            "ids must be unique: "
            + (f"repeated in this call: {repeated[:5]}; " if repeated else "")
            + (f"already in the gallery: {clash[:5]}" if clash else "")
        )
    return new_ids, next_id


def check_metadata(metadata: Sequence[dict] | None, n: int) -> list[dict]:
    """One JSON-serialisable dict per row, copied (``{}`` each when ``metadata`` is ``None``)."""
    if metadata is None:
        return [{} for _ in range(n)]
    if isinstance(metadata, dict):
        raise ValueError("metadata must be a list of dicts (one per row), got a single dict")
    meta = list(metadata)
    if len(meta) != n:
        raise ValueError(f"metadata has {len(meta)} entries but embeddings has {n} rows: pass exactly one per row")
    for i, m in enumerate(meta):
        if not isinstance(m, dict):
            raise ValueError(f"metadata[{i}] must be a dict, got {type(m).__name__}")
        try:
            json.dumps(m, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata[{i}] is not JSON-serialisable ({exc}): use str/int/float/bool/list/dict values") from exc
    return [dict(m) for m in meta]
