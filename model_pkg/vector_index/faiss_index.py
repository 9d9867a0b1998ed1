"""Making, training, tuning and building faiss indexes of an :class:`~.spec.IndexSpec`, and exact
re-ranking of their candidates.

Separate from the choice (``spec``) and from the saved folder (``index_folder``): these are the only
functions that call faiss to build or tune an index, shared by the gallery (in memory), ``gallery build``
(from shards on disk) and the bench.
"""

from __future__ import annotations

import functools
from typing import Any

import faiss
import numpy as np

from .spec import (
    FASTSCAN_IMPLEM,
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    IVF_NPROBE,
    IndexSpec,
    VectorIndexError,
    train_sample_size,
)

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
        ivf_pq: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
        if not spec.fast_scan:  # index_factory turns on polysemous training (Hamming filtering we never use): 30x slower
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
        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.nprobe = spec.nprobe or IVF_NPROBE
        if spec.fast_scan:
            ivf.implem = FASTSCAN_IMPLEM


def kind_of(index: faiss.Index) -> str:
    """The :data:`~.spec.KINDS` entry of a faiss index (``VectorIndexError`` for any other type)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, (faiss.IndexIVFPQ, faiss.IndexIVFPQFastScan)):
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


@functools.lru_cache(maxsize=8)
def _fp16_decoder(dim: int) -> faiss.Index:
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def _rows_float32(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``vectors[rows]`` as float32. A float16 store (the re-rank copy on disk) is decoded by faiss, with SIMD:
    numpy's float16 -> float32 conversion took 1.2 ms of a 1.5 ms re-rank of 1,000 candidates."""
    if vectors.dtype != np.float16 or vectors.ndim != 2:
        return np.asarray(vectors[rows], dtype=np.float32)
    codes = np.ascontiguousarray(vectors.view(np.uint8)[rows])  # 2 bytes per dimension
    return _fp16_decoder(int(vectors.shape[1])).sa_decode(codes)


def _exact_scores(vectors: np.ndarray | faiss.IndexFlat, queries: np.ndarray, safe: np.ndarray, metric: str) -> np.ndarray:
    """(Q, C) similarities of each query to its candidate rows ``safe`` (higher = closer; -squared L2 for "l2")."""
    if isinstance(vectors, faiss.IndexFlat):  # faiss's SIMD distances on the stored rows: no copy of them
        dist = np.empty(safe.shape, dtype=np.float32)
        ids = np.ascontiguousarray(safe, dtype=np.int64)
        flat: Any = vectors  # faiss's stubs lack compute_distance_subset
        flat.compute_distance_subset(
            len(queries), faiss.swig_ptr(queries), safe.shape[1], faiss.swig_ptr(dist), faiss.swig_ptr(ids)
        )
        return dist if metric == "ip" else -dist
    cand = _rows_float32(vectors, safe.reshape(-1)).reshape(*safe.shape, -1)  # (Q, C, dim)
    # einsum, not matmul: OpenBLAS's threads would wake up and fight faiss's OpenMP threads, which spin for a
    # while after each search; on 2 cores that made a re-rank of 1,000 candidates 6x slower (bench/README.md)
    if metric == "ip":
        return np.einsum("qd,qcd->qc", queries, cand)
    diff = cand - queries[:, None, :]
    return -np.einsum("qcd,qcd->qc", diff, diff)


def rerank(
    vectors: np.ndarray | faiss.IndexFlat, queries: np.ndarray, candidates: np.ndarray, k: int, metric: str = "ip"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-scoring of approximate ``candidates`` (Q, C) row positions (-1 = none) against ``vectors``: an
    array (float32, or the float16 copy on disk) or a faiss flat index holding them (a gallery's: 2x faster).

    Returns faiss-style ``(distances, positions)`` of the best ``k`` per query: inner products (higher
    first) for ``"ip"``, squared L2 distances (lower first) for ``"l2"``; missing entries are -1."""
    safe = np.where(candidates < 0, 0, candidates)
    score = _exact_scores(vectors, np.ascontiguousarray(queries, dtype=np.float32), safe, metric)
    score[candidates < 0] = -np.inf
    k = min(k, candidates.shape[1])
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(score, top, axis=1)
    pos = np.take_along_axis(candidates, top, axis=1)
    pos[~np.isfinite(best)] = -1
    dist = best if metric == "ip" else -best
    return dist.astype(np.float32), pos.astype(np.int64)
