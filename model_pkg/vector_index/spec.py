"""Which faiss index kind a collection of vectors gets: :class:`IndexSpec`, :func:`choose_spec` (by size),
:func:`spec_for_build` (what ``gallery build --index KIND`` asks for) and the numbers behind the choice.

Separate from the faiss calls (``faiss_index``) because the choice is plain arithmetic on the size and
dimension: the gallery, ``gallery build`` and the bench all ask it, and the thresholds here are the ones
tests scale down (``monkeypatch.setattr(spec, "EXACT_MAX", ...)``), so they are read from this module at
call time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "IndexSpec",
    "VectorIndexError",
    "choose_spec",
    "hnsw_spec",
    "nlist_for",
    "pq_m_for",
    "spec_for_build",
    "train_sample_size",
]

KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")

# Chosen from bench/bench_gallery_scale.py (bench/README.md, "Gallery at scale"); see choose_spec.
EXACT_MAX = 20_000  # exact scan: 18 ms per query at 100k, 233 ms at 1M on 2 cores (about 4 ms here)
IVF_MIN = 100_000  # `gallery build` (no float vectors in memory): IVF from here, HNSW below; also the size
# from which a GalleryIndex goes approximate (`approximate_above`: exact search takes 18 ms per query at 100k)
HNSW_M = 32
# 1M realistic vectors, 2 cores (bench/README.md, "Gallery at scale"): HNSW32 with float16 storage, efSearch 224:
# recall@10 0.959 at p50 1.89 ms (192: 0.947 at 1.63 ms); efConstruction 80 builds it in 8 minutes
HNSW_EF_SEARCH = 224
HNSW_EF_CONSTRUCTION = 80
HNSW_STORAGE = "fp16"  # the graph's copy of the vectors: half the bytes per distance, same recall as float32
HNSW_STORAGES = ("flat", "fp16")
HNSW_RERANK = 2  # a gallery re-scores its HNSW-fp16 candidates exactly: exact scores, a little more recall
HNSW_MAX_KEPT = 2_000_000  # a GalleryIndex (float vectors kept) uses HNSW up to here; IVF-PQ builds faster beyond
IVF_MIN_TRAIN = 10_000  # fewer vectors cannot train IVF cells and PQ codebooks well: such a gallery uses HNSW
IVF_NPROBE = 64  # 1M realistic vectors: recall@10 0.66 at p50 1.7 ms with re-ranking (bench/README.md)
RERANK_FROM_DISK = 10  # `gallery build` IVF-PQ: candidates re-scored from the float16 copy on disk
PQ_BYTES_PER_DIM = 1 / 8  # 64 one-byte codes for a 512-d vector, re-scored from float vectors kept in RAM
PQ_BYTES_PER_DIM_STANDALONE = 1 / 4  # 128 bytes: at 10M, recall@10 0.69 vs 0.47 for 64 bytes at nprobe 32
RERANK = 10  # candidates re-scored exactly per result wanted, when the exact vectors are kept
TRAIN_POINTS_PER_CELL = 64  # k-means sample: faiss wants >= 39 points per centroid
MAX_TRAIN = 500_000


class VectorIndexError(ValueError):
    """Bad index settings, or a vector-index folder that is missing, corrupt or not one."""


@dataclass
class IndexSpec:
    """A faiss index kind and its parameters (unused ones are ``None``)."""

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    hnsw_m: int | None = None
    ef_search: int | None = None
    ef_construction: int | None = None
    rerank: int = 1
    storage: str = "flat"  # hnsw: the vectors inside the graph, "flat" (float32) or "fp16"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VectorIndexError(f"index kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("nlist", "nprobe", "pq_m", "hnsw_m", "ef_search", "ef_construction"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise VectorIndexError(f"{name} must be an integer >= 1, got {v!r}")
        if self.kind.startswith("ivf") and self.nlist is None:
            raise VectorIndexError(f"an {self.kind} index needs nlist (the number of k-means cells)")
        if self.kind == "ivf_pq" and self.pq_m is None:
            raise VectorIndexError("an ivf_pq index needs pq_m (bytes per vector)")
        if self.storage not in HNSW_STORAGES:
            raise VectorIndexError(f"storage must be one of {', '.join(HNSW_STORAGES)}, got {self.storage!r}")
        if isinstance(self.rerank, bool) or not isinstance(self.rerank, (int, np.integer)) or self.rerank < 1:
            raise VectorIndexError(f"rerank must be an integer >= 1 (1 = no exact re-ranking), got {self.rerank!r}")

    def factory_string(self) -> str:
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m or HNSW_M}" + (",SQfp16" if self.storage == "fp16" else "")
        if self.kind == "ivf_flat":
            return f"IVF{self.nlist},Flat"
        return f"IVF{self.nlist},PQ{self.pq_m}"

    @property
    def needs_training(self) -> bool:
        return self.kind.startswith("ivf")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def pq_m_for(dim: int, bytes_per_dim: float = PQ_BYTES_PER_DIM) -> int:
    """Bytes per PQ code: dim * bytes_per_dim, lowered to a divisor of dim (faiss needs dim % m == 0)."""
    m = max(1, int(round(dim * bytes_per_dim)))
    while dim % m:
        m -= 1
    return m


def nlist_for(n: int) -> int:
    """About 4 sqrt(n) cells, a power of two (1M -> 4096, 10M -> 16384, 100M -> 32768)."""
    return int(2 ** round(math.log2(max(16.0, 4.0 * math.sqrt(n)))))


def hnsw_spec(ef_search: int | None = None, ef_construction: int | None = None, rerank: int = 1) -> IndexSpec:
    """The HNSW index every path builds: M = ``HNSW_M``, float16 storage, the measured search breadths."""
    return IndexSpec(
        "hnsw",
        hnsw_m=HNSW_M,
        ef_search=ef_search or HNSW_EF_SEARCH,
        ef_construction=ef_construction or HNSW_EF_CONSTRUCTION,
        storage=HNSW_STORAGE,
        rerank=rerank,
    )


def choose_spec(n: int, dim: int, exact_vectors_kept: bool = False, memory_bytes: int | None = None) -> IndexSpec:
    """The index for ``n`` vectors of dimension ``dim``.

    * ``n <= EXACT_MAX``: exact (fast enough, nothing to build);
    * ``n < IVF_MIN``, or with ``exact_vectors_kept`` (a GalleryIndex holds the float vectors anyway)
      ``n < HNSW_MAX_KEPT``: HNSW with float16 storage (no training; at 1M the best recall under 2 ms), its
      ``HNSW_RERANK * k`` candidates re-scored exactly when the float vectors are kept;
    * larger: IVF with about ``4 sqrt(n)`` cells.  With ``exact_vectors_kept``, IVF-PQ codes plus exact
      re-ranking of ``RERANK * k`` candidates; otherwise IVF-Flat when the float vectors fit in
      ``memory_bytes`` (default 2 GiB), else IVF-PQ with dim/4-byte codes (re-ranked from a float16 copy on
      disk by ``gallery build``).
    """
    if n <= EXACT_MAX:
        return IndexSpec("flat")
    if n < IVF_MIN or (exact_vectors_kept and n < HNSW_MAX_KEPT):
        return hnsw_spec(rerank=HNSW_RERANK if exact_vectors_kept else 1)
    nlist = nlist_for(n)
    budget = memory_bytes if memory_bytes is not None else 2 * 2**30
    if exact_vectors_kept:
        return IndexSpec("ivf_pq", nlist=nlist, nprobe=IVF_NPROBE, pq_m=pq_m_for(dim), rerank=RERANK)
    if n * dim * 4 <= budget:
        return IndexSpec("ivf_flat", nlist=nlist, nprobe=IVF_NPROBE)
    return IndexSpec("ivf_pq", nlist=nlist, nprobe=IVF_NPROBE, pq_m=pq_m_for(dim, PQ_BYTES_PER_DIM_STANDALONE))


def spec_for_build(
    kind: str,
    n: int,
    dim: int,
    memory_bytes: int,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    rerank_factor: int | None = None,
) -> IndexSpec:
    """The index ``python -m model_pkg.gallery build --index KIND`` makes of ``n`` vectors of dimension ``dim``.

    ``kind="auto"``: :func:`choose_spec` with no exact vectors kept (IVF-Flat while the float vectors fit
    ``memory_bytes``, else IVF-PQ); a named IVF kind gets about ``4 sqrt(n)`` cells and dim/4-byte PQ codes.
    ``nlist``, ``nprobe``, ``pq_m`` override those of an IVF kind.  ``rerank_factor`` (default
    ``RERANK_FROM_DISK`` for IVF-PQ, else 1): the ``k * rerank_factor`` best PQ candidates of a query are
    re-scored with a float16 copy of the vectors written next to the index."""
    if kind == "auto":
        spec = choose_spec(n, dim, memory_bytes=memory_bytes)
    elif kind == "flat":
        spec = IndexSpec("flat")
    elif kind == "hnsw":
        spec = hnsw_spec()
    elif kind in ("ivf_flat", "ivf_pq"):
        code_size = pq_m_for(dim, PQ_BYTES_PER_DIM_STANDALONE) if kind == "ivf_pq" else None
        spec = IndexSpec(kind, nlist=nlist_for(n), nprobe=IVF_NPROBE, pq_m=code_size)
    else:
        raise VectorIndexError(f"index kind must be 'auto' or one of {', '.join(KINDS)}, got {kind!r}")
    if spec.needs_training:
        spec = IndexSpec(
            spec.kind,
            nlist=nlist or spec.nlist,
            nprobe=nprobe or spec.nprobe,
            pq_m=(pq_m or spec.pq_m) if spec.kind == "ivf_pq" else None,
        )
    factor = rerank_factor if rerank_factor is not None else (RERANK_FROM_DISK if spec.kind == "ivf_pq" else 1)
    if factor != spec.rerank:
        spec = IndexSpec(**{**spec.to_dict(), "rerank": factor})
    return spec


def train_sample_size(spec: IndexSpec, n: int) -> int:
    """Vectors to train on: ``TRAIN_POINTS_PER_CELL`` per cell (PQ: at least 40 per code word), at most ``n``
    and ``MAX_TRAIN`` unless the cells need more (faiss wants >= 39 points per cell)."""
    if not spec.needs_training:
        return 0
    nlist = max(spec.nlist or 1, 1)
    want = nlist * TRAIN_POINTS_PER_CELL
    if spec.kind == "ivf_pq":
        want = max(want, 256 * 40)
    return int(min(n, max(min(want, MAX_TRAIN), 40 * nlist)))
