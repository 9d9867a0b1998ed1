"""Making, training, tuning and building faiss indexes of an :class:`~.spec.IndexSpec`, and exact
re-ranking of their candidates.

Separate from the choice (``spec``) and from the saved folder (``index_folder``): these are the only
functions that call faiss to build or tune an index, shared by the gallery (in memory), ``gallery build``
(from shards on disk) and the bench.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .spec import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, IVF_NPROBE, IndexSpec, VectorIndexError, train_sample_size

__all__ = [
    "apply_search_params",
    "build_index",
    "configure_pq_training",
    "faiss_metric",
    "kind_of",
    "make_index",
    "rerank",
    "train",
]


def faiss_metric(metric: str) -> int:
    if metric not in ("ip", "l2"):
        raise VectorIndexError(f"metric must be 'ip' or 'l2', got {metric!r}")
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def make_index(spec: IndexSpec, dim: int, metric: str = "ip") -> faiss.Index:
    """An empty (untrained) index of ``spec``, with its search parameters set."""
    index = faiss.index_factory(int(dim), spec.factory_string(), faiss_metric(metric))
    apply_search_params(index, spec)
    if spec.kind == "hnsw":
        hnsw_index: Any = faiss.downcast_index(index)  # faiss's stubs only know the base Index
        hnsw_index.hnsw.efConstruction = spec.ef_construction or HNSW_EF_CONSTRUCTION
    elif spec.kind == "ivf_pq":
        # index_factory turns on polysemous training (Hamming filtering we never use): 30x slower training
        ivf_pq: Any = faiss.downcast_index(index)
        ivf_pq.do_polysemous_training = False
        configure_pq_training(ivf_pq)
    return index


def configure_pq_training(ivf_pq: Any) -> None:
    """Codebook k-means on at most 64 points per code word, 10 iterations (faiss: 256 and 25): 8x faster,
    and the exact re-ranking makes up for the slightly coarser codes."""
    ivf_pq.pq.cp.niter = 10
    ivf_pq.pq.cp.max_points_per_centroid = 64


def apply_search_params(index: faiss.Index, spec: IndexSpec) -> None:
    if spec.kind == "hnsw":
        hnsw_index: Any = faiss.downcast_index(index)
        hnsw_index.hnsw.efSearch = spec.ef_search or HNSW_EF_SEARCH
    elif spec.kind.startswith("ivf"):
        faiss.extract_index_ivf(index).nprobe = spec.nprobe or IVF_NPROBE


def kind_of(index: faiss.Index) -> str:
    """The :data:`~.spec.KINDS` entry of a faiss index (``VectorIndexError`` for any other type)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivf_pq"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf_flat"
    raise VectorIndexError(f"unsupported faiss index type {type(index).__name__}")


def train(index: faiss.Index, sample: np.ndarray, seed: int = 0) -> None:
    """Train ``index`` (k-means cells, PQ codebooks) on ``sample``; a no-op for flat and HNSW."""
    if index.is_trained:
        return
    ivf = faiss.extract_index_ivf(index)
    if sample.shape[0] < ivf.nlist:
        raise VectorIndexError(
            f"an IVF index with {ivf.nlist} cells needs at least that many training vectors, got {sample.shape[0]}: "
            "use fewer cells (nlist) or an exact/HNSW index for so few vectors"
        )
    ivf.cp.seed = seed
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def build_index(vectors: np.ndarray, spec: IndexSpec, metric: str = "ip", seed: int = 0) -> faiss.Index:
    """Build ``spec`` over ``vectors`` (N, dim) float32 (row i gets id i); IVF kinds train on a random sample."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = make_index(spec, x.shape[1], metric)
    if spec.needs_training:
        m = train_sample_size(spec, x.shape[0])
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=m, replace=False))
        train(index, x[rows], seed)
    if x.shape[0]:
        index.add(x)
    return index


def rerank(
    vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, metric: str = "ip"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-scoring of approximate ``candidates`` (Q, C) row positions (-1 = none) against ``vectors``.

    Returns faiss-style ``(distances, positions)`` of the best ``k`` per query: inner products (higher
    first) for ``"ip"``, squared L2 distances (lower first) for ``"l2"``; missing entries are -1."""
    safe = np.where(candidates < 0, 0, candidates)
    cand = vectors[safe.reshape(-1)].reshape(*safe.shape, -1)  # (Q, C, dim)
    if metric == "ip":
        score = np.einsum("qd,qcd->qc", queries, cand)
        score[candidates < 0] = -np.inf
    else:
        diff = cand - queries[:, None, :]
        score = -np.einsum("qcd,qcd->qc", diff, diff)
        score[candidates < 0] = -np.inf
    k = min(k, candidates.shape[1])
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(score, top, axis=1)
    pos = np.take_along_axis(candidates, top, axis=1)
    pos[~np.isfinite(best)] = -1
    dist = best if metric == "ip" else -best
    return dist.astype(np.float32), pos.astype(np.int64)
