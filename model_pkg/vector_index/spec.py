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
    "fast_scan_spec",
    "hnsw_spec",
    "nlist_for",
    "pq_m_for",
    "spec_for_build",
    "train_sample_size",
]

KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")

# Chosen from bench/bench_gallery_scale.py (bench/README.md, "Scale"); see choose_spec.
EXACT_MAX = 20_000  # exact scan: 18 ms per query at 100k, 233 ms at 1M on 2 cores (about 4 ms here)
IVF_MIN = 100_000  # approximate from here (HNSW below, no training needed); also the size from which a GalleryIndex
# goes approximate (`approximate_above`: exact search takes 18 ms per query at 100k)
HNSW_M = 32
# 1M realistic vectors, 2 cores: HNSW32 with float16 storage, efSearch 224: recall@10 0.959 at p50 1.89 ms (192: 0.947
# at 1.63 ms); efConstruction 80 builds it in 8 minutes. Chosen by name only since fast-scan IVF-PQ (below) matches it
# and builds in a minute.
HNSW_EF_SEARCH = 224
HNSW_EF_CONSTRUCTION = 80
HNSW_STORAGE = "fp16"  # the graph's copy of the vectors: half the bytes per distance, same recall as float32
HNSW_STORAGES = ("flat", "fp16")
HNSW_RERANK = 2  # a gallery re-scores its HNSW-fp16 candidates exactly: exact scores, a little more recall
IVF_MIN_TRAIN = 10_000  # fewer vectors cannot train IVF cells and PQ codebooks well: such a gallery uses HNSW
IVF_NPROBE = 64  # IVF-Flat and 8-bit IVF-PQ (named kinds, on-disk lists): cells scanned per query
PQ_BYTES_PER_DIM = 1 / 8  # 8-bit IVF-PQ in a gallery (named kind): 64 one-byte codes for a 512-d vector
PQ_BYTES_PER_DIM_STANDALONE = 1 / 4  # 8-bit IVF-PQ elsewhere (on-disk lists): 128 bytes for a 512-d vector
RERANK = 10  # 8-bit IVF-PQ in a gallery: candidates re-scored exactly per result wanted
RERANK_FROM_DISK = 10  # 8-bit IVF-PQ of `gallery build`: candidates re-scored from the float16 copy on disk
PQ_BITS = (4, 8)
# Fast-scan IVF-PQ, the automatic choice from IVF_MIN vectors: dim/2 codes of 4 bits (128 bytes for 512-d), scanned
# with SIMD table lookups, several times faster per code than 8-bit PQ; the best candidates re-scored exactly.
FASTSCAN_PQ_M_PER_DIM = 1 / 2
# faiss's fast-scan search "implem" 15: one query's cells scanned by all threads (14/15 split nq x nprobe; 15 keeps
# a reservoir instead of a heap, which stays fast for the 1,000 candidates a re-ranked search asks for)
FASTSCAN_IMPLEM = 15
# A GalleryIndex (float vectors in RAM): about 2 sqrt(n) cells, 3/32 of them scanned, 50 k candidates re-scored.
# 1M realistic vectors: 2,048 cells, nprobe 192, 500 candidates: recall@10 0.955 (bench/README.md)
GALLERY_CELLS_PER_SQRT_N = 2
GALLERY_SCAN_FRACTION = 3 / 32
GALLERY_RERANK = 50
# `gallery build` (float16 copy on disk): about sqrt(n) cells, a 16th scanned, 100 k candidates re-scored.
# 10M realistic vectors: 4,096 cells, nprobe 256, 1,000 candidates: recall@10 0.916 at p50 8.9 ms, 1.3 GB in RAM
BUILD_CELLS_PER_SQRT_N = 1
BUILD_SCAN_FRACTION = 1 / 16
BUILD_RERANK = 100
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
    pq_bits: int = 8  # ivf_pq: bits per sub-quantizer code; 4 = faiss's fast-scan layout (SIMD table lookups)

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
        if self.pq_bits not in PQ_BITS:
            raise VectorIndexError(f"pq_bits must be one of {', '.join(map(str, PQ_BITS))}, got {self.pq_bits!r}")
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
        return f"IVF{self.nlist},PQ{self.pq_m}" + ("x4fs" if self.pq_bits == 4 else "")

    @property
    def fast_scan(self) -> bool:
        return self.kind == "ivf_pq" and self.pq_bits == 4

    def code_bytes(self, dim: int) -> float:
        """Bytes per vector the index keeps in its lists or graph (ids and links not counted)."""
        if self.kind == "ivf_pq":
            return (self.pq_m or 0) * self.pq_bits / 8
        return dim * (2 if self.kind == "hnsw" and self.storage == "fp16" else 4)

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


def _power_of_two(x: float) -> int:
    return int(2 ** round(math.log2(max(16.0, x))))


def nlist_for(n: int) -> int:
    """About 4 sqrt(n) cells, a power of two (1M -> 4096, 10M -> 16384, 100M -> 32768): IVF-Flat and 8-bit IVF-PQ."""
    return _power_of_two(4.0 * math.sqrt(n))


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


def fast_scan_spec(n: int, dim: int, exact_vectors_kept: bool) -> IndexSpec:
    """Fast-scan IVF-PQ for ``n`` vectors: dim/2 4-bit codes, its candidates re-scored exactly.

    With ``exact_vectors_kept`` (a GalleryIndex: float vectors in RAM, re-scoring is cheap): about ``2 sqrt(n)``
    cells, 3/32 of them scanned, ``GALLERY_RERANK * k`` candidates; else (``gallery build``: a float16 copy on
    disk) about ``sqrt(n)`` cells, a 16th scanned, ``BUILD_RERANK * k`` candidates. Never more cells than the
    vectors can train (``TRAIN_POINTS_PER_CELL`` each)."""
    cells, fraction, rerank = (
        (GALLERY_CELLS_PER_SQRT_N, GALLERY_SCAN_FRACTION, GALLERY_RERANK)
        if exact_vectors_kept
        else (BUILD_CELLS_PER_SQRT_N, BUILD_SCAN_FRACTION, BUILD_RERANK)
    )
    nlist = _power_of_two(cells * math.sqrt(max(n, 1)))
    while nlist > 16 and nlist * TRAIN_POINTS_PER_CELL > n:
        nlist //= 2
    return IndexSpec(
        "ivf_pq",
        nlist=nlist,
        nprobe=max(1, round(nlist * fraction)),
        pq_m=pq_m_for(dim, FASTSCAN_PQ_M_PER_DIM),
        pq_bits=4,
        rerank=rerank,
    )


def choose_spec(n: int, dim: int, exact_vectors_kept: bool = False) -> IndexSpec:
    """The index for ``n`` vectors of dimension ``dim``.

    * ``n <= EXACT_MAX``: exact (fast enough, nothing to build);
    * ``n < IVF_MIN``: HNSW with float16 storage (no training), its ``HNSW_RERANK * k`` candidates re-scored
      exactly when the float vectors are kept (``exact_vectors_kept``: a GalleryIndex holds them anyway);
    * larger: fast-scan IVF-PQ with exact re-scoring (:func:`fast_scan_spec`): at 1M it matches HNSW's recall
      at the same speed, builds in a minute instead of eight and deletes without a rebuild, and at 10M it is
      what fits 2 GB (dim/4 bytes per vector: 1.3 GB for 10M 512-d vectors).
    """
    if n <= EXACT_MAX:
        return IndexSpec("flat")
    if n < IVF_MIN:
        return hnsw_spec(rerank=HNSW_RERANK if exact_vectors_kept else 1)
    return fast_scan_spec(n, dim, exact_vectors_kept)


def spec_for_build(
    kind: str,
    n: int,
    dim: int,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    rerank_factor: int | None = None,
    on_disk: bool = False,
) -> IndexSpec:
    """The index ``python -m model_pkg.gallery build --index KIND`` makes of ``n`` vectors of dimension ``dim``.

    ``kind="auto"``: :func:`choose_spec` with no exact vectors kept (fast-scan IVF-PQ from ``IVF_MIN`` vectors);
    ``"ivf_pq"``: fast-scan IVF-PQ whatever the size; ``"ivf_flat"``: about ``4 sqrt(n)`` cells. ``on_disk``
    (inverted lists in a memory-mapped file, which holds plain codes, not fast-scan's blocks of 32): 8-bit
    IVF-PQ with dim/4-byte codes instead. ``nlist``, ``nprobe``, ``pq_m`` override those of an IVF kind.
    ``rerank_factor`` (default: the kind's, ``BUILD_RERANK`` for fast scan, ``RERANK_FROM_DISK`` for 8-bit
    PQ, else 1): the ``k * rerank_factor`` best PQ candidates of a query are re-scored with a float16 copy of the
    vectors written next to the index."""
    if kind == "auto":
        spec = choose_spec(n, dim)
    elif kind == "flat":
        spec = IndexSpec("flat")
    elif kind == "hnsw":
        spec = hnsw_spec()
    elif kind == "ivf_flat":
        spec = IndexSpec(kind, nlist=nlist_for(n), nprobe=IVF_NPROBE)
    elif kind == "ivf_pq":
        spec = fast_scan_spec(n, dim, exact_vectors_kept=False)
    else:
        raise VectorIndexError(f"index kind must be 'auto' or one of {', '.join(KINDS)}, got {kind!r}")
    if on_disk and spec.fast_scan:
        spec = IndexSpec(
            "ivf_pq",
            nlist=nlist_for(n),
            nprobe=IVF_NPROBE,
            pq_m=pq_m_for(dim, PQ_BYTES_PER_DIM_STANDALONE),
            rerank=RERANK_FROM_DISK,
        )
    if spec.needs_training:
        spec = IndexSpec(
            **{
                **spec.to_dict(),
                "nlist": nlist or spec.nlist,
                "nprobe": nprobe or spec.nprobe,
                "pq_m": (pq_m or spec.pq_m) if spec.kind == "ivf_pq" else None,
            }
        )
    if rerank_factor is not None and rerank_factor != spec.rerank:
        spec = IndexSpec(**{**spec.to_dict(), "rerank": rerank_factor})
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
