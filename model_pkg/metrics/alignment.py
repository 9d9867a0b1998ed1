"""Embedding-space alignment: do vectors mapped from space A find their own true space-B vector?

Row ``i`` of vectors mapped from space A should be nearest to row ``i`` of the true space-B vectors, among
all rows (vec2vec's protocol). Used by the mini-vec2vec aligner and ``bench/bench_alignment.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["alignment_metrics"]


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
