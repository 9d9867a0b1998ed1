"""Which faiss index a gallery of a given size uses, how it is built, and `python -m model_pkg.gallery build`.

Kinds (:class:`IndexSpec`, faiss ``index_factory`` strings):

* ``flat`` -- exact search (``Flat``); every query scans every vector.
* ``hnsw`` -- ``HNSW<M>`` graph; no training, slow to build (about 20 min per million 512-d vectors on
  one core), memory = vectors + graph.
* ``ivf_flat`` -- ``IVF<nlist>,Flat``: k-means cells, a query scans ``nprobe`` cells; memory = vectors.
* ``ivf_pq`` -- ``IVF<nlist>,PQ<m>``: the same cells holding ``m``-byte product-quantised codes (64 bytes
  instead of 2048 for a 512-d vector); with ``rerank`` > 1 the ``k * rerank`` best candidates are
  re-scored exactly against the float vectors when they are at hand (a :class:`~model_pkg.gallery.GalleryIndex`
  keeps them), which brings recall back to that of IVF-Flat at a fraction of its memory.

:func:`choose_spec` picks the kind and its parameters from the number of vectors; the thresholds and
numbers come from ``bench/bench_gallery_scale.py`` (``bench/README.md``, "Gallery at scale"). IVF
indexes are trained on a random sample (:func:`train_sample_size`), never on all vectors.

``python -m model_pkg.gallery build --embeddings DIR --out DIR`` reads the shards written by
``python -m model_pkg.embed`` one at a time, trains an IVF index on a sample, adds the shards, and saves a
:class:`VectorIndex` folder atomically. With ``--on-disk`` (or automatically when the codes would not fit
in ``--max-memory-gb``) every shard is added to its own copy of the trained index, written out, and the
inverted lists are merged into one ``lists.ivfdata`` file that is memory-mapped when searching
(faiss ``OnDiskInvertedLists``), so the index can exceed the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .fileio import sha256_file, swap_folder

__all__ = [
    "KINDS",
    "IndexSpec",
    "VectorIndex",
    "VectorIndexError",
    "build_from_embeddings",
    "build_index",
    "choose_spec",
    "kind_of",
    "main",
    "rerank",
    "search_parts",
    "train_sample_size",
]

KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")

# Chosen from bench/bench_gallery_scale.py (bench/README.md, "Gallery at scale"); see choose_spec.
EXACT_MAX = 20_000  # exact scan: 18 ms per query at 100k, 233 ms at 1M on 2 cores (about 4 ms here)
IVF_MIN = 100_000  # from here IVF-PQ + exact re-ranking is faster to build than HNSW and as accurate
HNSW_M = 32
HNSW_EF_SEARCH = 64
HNSW_EF_CONSTRUCTION = 40
IVF_MIN_TRAIN = 10_000  # fewer vectors cannot train IVF cells and PQ codebooks well: such a gallery uses HNSW
IVF_NPROBE = 64  # 1M realistic vectors: recall@10 0.66 at p50 1.7 ms with re-ranking (bench/README.md)
RERANK_FROM_DISK = 10  # `gallery build` IVF-PQ: candidates re-scored from the float16 copy on disk
PQ_BYTES_PER_DIM = 1 / 8  # 64 one-byte codes for a 512-d vector, re-scored from float vectors kept in RAM
PQ_BYTES_PER_DIM_STANDALONE = 1 / 4  # 128 bytes: at 10M, recall@10 0.69 vs 0.47 for 64 bytes at nprobe 32
RERANK = 10  # candidates re-scored exactly per result wanted, when the exact vectors are kept
TRAIN_POINTS_PER_CELL = 64  # k-means sample: faiss wants >= 39 points per centroid
MAX_TRAIN = 500_000

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
LISTS_FILE = "lists.ivfdata"
VECTORS_FILE = "vectors.f16.npy"  # float16 copy for exact re-ranking, memory-mapped (read k * rerank rows per query)
META_FILE = "vector_index.json"
FORMAT = "petmatch-vector-index"


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
        if isinstance(self.rerank, bool) or not isinstance(self.rerank, (int, np.integer)) or self.rerank < 1:
            raise VectorIndexError(f"rerank must be an integer >= 1 (1 = no exact re-ranking), got {self.rerank!r}")

    def factory_string(self) -> str:
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m or HNSW_M}"
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


def _pq_m(dim: int, bytes_per_dim: float = PQ_BYTES_PER_DIM) -> int:
    """Bytes per PQ code: dim * bytes_per_dim, lowered to a divisor of dim (faiss needs dim % m == 0)."""
    m = max(1, int(round(dim * bytes_per_dim)))
    while dim % m:
        m -= 1
    return m


def _nlist(n: int) -> int:
    """About 4 sqrt(n) cells, a power of two (1M -> 4096, 10M -> 16384, 100M -> 32768)."""
    return int(2 ** round(math.log2(max(16.0, 4.0 * math.sqrt(n)))))


def choose_spec(n: int, dim: int, exact_vectors_kept: bool = False, memory_bytes: int | None = None) -> IndexSpec:
    """The index for ``n`` vectors of dimension ``dim``.

    * ``n <= EXACT_MAX``: exact (fast enough, nothing to build);
    * ``n < IVF_MIN``: HNSW (no training; builds in seconds at this size);
    * larger: IVF with about ``4 sqrt(n)`` cells.  With ``exact_vectors_kept`` (a GalleryIndex holds the
      float vectors anyway) IVF-PQ codes plus exact re-ranking of ``RERANK * k`` candidates; otherwise
      IVF-Flat when the float vectors fit in ``memory_bytes`` (default 2 GiB), else IVF-PQ with dim/4-byte
      codes (re-ranked from a float16 copy on disk by ``gallery build``).
    """
    if n <= EXACT_MAX:
        return IndexSpec("flat")
    if n < IVF_MIN:
        return IndexSpec("hnsw", hnsw_m=HNSW_M, ef_search=HNSW_EF_SEARCH, ef_construction=HNSW_EF_CONSTRUCTION)
    nlist = _nlist(n)
    budget = memory_bytes if memory_bytes is not None else 2 * 2**30
    if exact_vectors_kept:
        return IndexSpec("ivf_pq", nlist=nlist, nprobe=IVF_NPROBE, pq_m=_pq_m(dim), rerank=RERANK)
    if n * dim * 4 <= budget:
        return IndexSpec("ivf_flat", nlist=nlist, nprobe=IVF_NPROBE)
    return IndexSpec("ivf_pq", nlist=nlist, nprobe=IVF_NPROBE, pq_m=_pq_m(dim, PQ_BYTES_PER_DIM_STANDALONE))


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
    """The :data:`KINDS` entry of a faiss index (``VectorIndexError`` for any other type)."""
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


# --------------------------------------------------------------------------- #
# A standalone index folder built from sharded embeddings
# --------------------------------------------------------------------------- #
class VectorIndex:
    """A faiss index over embeddings with string ids and labels, saved as a folder.

    Files: ``index.faiss``, ``ids.parquet`` (``id``, ``label`` in index order), ``vector_index.json``
    (spec, metric, dim, count, model_id, sha256 of the two files); for on-disk inverted lists
    ``lists.ivfdata``, and with ``spec.rerank > 1`` ``vectors.f16.npy`` (both memory-mapped when searching)."""

    def __init__(
        self, index: faiss.Index, ids: list[str], labels: list[str], meta: dict[str, Any], vectors: np.ndarray | None = None
    ) -> None:
        self.index = index
        self.vectors = vectors
        self.ids = ids
        self.labels = labels
        self.meta = meta
        self.spec = IndexSpec.from_dict(meta["spec"])

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def nprobe(self) -> int | None:
        return int(faiss.extract_index_ivf(self.index).nprobe) if self.spec.needs_training else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if not self.spec.needs_training:
            raise VectorIndexError(f"nprobe applies to IVF indexes; this one is {self.spec.kind}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise VectorIndexError(f"nprobe must be an integer >= 1, got {value!r}")
        faiss.extract_index_ivf(self.index).nprobe = int(value)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
        """(scores (Q, k) float32 best first, ids, labels); cosine for "ip" (queries are normalised here)."""
        q = np.array(queries, dtype=np.float32, ndmin=2)
        if q.ndim != 2 or q.shape[1] != self.index.d:
            raise VectorIndexError(f"queries must have shape (Q, {self.index.d}), got {q.shape}")
        if self.meta["metric"] == "ip":
            norms = np.linalg.norm(q, axis=1, keepdims=True)
            if (norms == 0).any() or not np.isfinite(q).all():
                raise VectorIndexError("queries contain zero, NaN or infinite vectors: embed those photos again")
            q /= norms
        q = np.ascontiguousarray(q)
        if self.vectors is not None and self.spec.rerank > 1:  # PQ candidates re-scored with the float16 copy
            _, cand = self.index.search(q, min(len(self), int(k) * self.spec.rerank))
            dist, pos = rerank(self.vectors, q, cand, int(k), self.meta["metric"])
        else:
            dist, pos = self.index.search(q, int(k))
        scores = dist if self.meta["metric"] == "ip" else -np.sqrt(np.maximum(dist, 0))
        ids = [[self.ids[p] for p in row if p >= 0] for row in pos]
        labels = [[self.labels[p] for p in row if p >= 0] for row in pos]
        return scores.astype(np.float32), ids, labels

    @classmethod
    def load(cls, directory: str | os.PathLike) -> VectorIndex:
        import pyarrow.parquet as pq

        d = Path(directory)
        meta_path = d / META_FILE
        if not meta_path.is_file():
            raise VectorIndexError(f"{str(d)!r} is not a vector index folder (no {META_FILE}): build one with `gallery build`")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise VectorIndexError(f"{str(meta_path)!r} is not a petmatch vector index file")
        for name in (INDEX_FILE, IDS_FILE):
            if not (d / name).is_file() or sha256_file(d / name) != meta["sha256"][name]:
                raise VectorIndexError(f"{str(d / name)!r} is missing or corrupt (checksum mismatch): rebuild the index")
        flags = 0
        if meta.get("on_disk"):
            if not (d / LISTS_FILE).is_file() or (d / LISTS_FILE).stat().st_size != meta["lists_bytes"]:
                raise VectorIndexError(f"{str(d / LISTS_FILE)!r} is missing or truncated: rebuild the index")
            flags = faiss.IO_FLAG_ONDISK_SAME_DIR  # the lists file is found next to index.faiss wherever it moved
        index = faiss.read_index(str(d / INDEX_FILE), flags)
        apply_search_params(index, IndexSpec.from_dict(meta["spec"]))
        table = pq.read_table(d / IDS_FILE)
        ids = [str(v) for v in table.column("id").to_pylist()]
        labels = [str(v) for v in table.column("label").to_pylist()]
        if len(ids) != index.ntotal:
            raise VectorIndexError(f"{str(d)!r}: {len(ids)} ids for {index.ntotal} vectors: rebuild the index")
        vectors = None
        if meta.get("rerank_vectors"):
            try:
                vectors = np.load(d / VECTORS_FILE, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise VectorIndexError(f"{str(d / VECTORS_FILE)!r} is missing or corrupt ({exc}): rebuild the index") from exc
            if vectors.shape != (index.ntotal, index.d):
                raise VectorIndexError(
                    f"{str(d / VECTORS_FILE)!r} has shape {vectors.shape}, expected ({index.ntotal}, {index.d})"
                )
        return cls(index, ids, labels, meta, vectors)


def search_parts(
    parts: Sequence[VectorIndex], queries: np.ndarray, k: int = 10
) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
    """Search S index parts (built with ``part=(i, S)``) and merge their top ``k`` by score, as one index would."""
    if not parts:
        raise VectorIndexError("search_parts needs at least one index part")
    results = [p.search(queries, k) for p in parts]
    scores, ids, labels = [], [], []
    for qi in range(len(results[0][1])):
        merged = sorted(
            ((float(s), i, lab) for r in results for s, i, lab in zip(r[0][qi], r[1][qi], r[2][qi])), key=lambda t: -t[0]
        )[:k]
        scores.append([m[0] for m in merged] + [-np.inf] * (k - len(merged)))
        ids.append([m[1] for m in merged])
        labels.append([m[2] for m in merged])
    return np.asarray(scores, dtype=np.float32), ids, labels


def _training_sample(emb_dir: Path, n: int, size: int, seed: int, part: tuple[int, int] | None) -> np.ndarray:
    from .embed import iter_embeddings

    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).choice(n, size=size, replace=False)] = True
    parts, start = [], 0
    for ids, _, vec in iter_embeddings(emb_dir, verify=False, part=part):
        parts.append(vec[chosen[start : start + len(ids)]])
        start += len(ids)
    return np.concatenate(parts)


def build_from_embeddings(
    embeddings: str | os.PathLike,
    out: str | os.PathLike,
    kind: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    on_disk: bool | None = None,
    max_memory_gb: float | None = None,
    seed: int = 0,
    log=print,
    rerank_factor: int | None = None,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Build a :class:`VectorIndex` folder from an embeddings folder (``model_pkg.embed``); returns its metadata.

    ``kind="auto"``: :func:`choose_spec` with no exact vectors kept (IVF-Flat while the float vectors fit
    ``max_memory_gb``, else IVF-PQ).  ``on_disk=None``: on-disk inverted lists when the index would not
    fit ``max_memory_gb`` (default: half the machine's memory).  ``rerank_factor`` (default
    ``RERANK_FROM_DISK`` for IVF-PQ, else 1): a float16 copy of the vectors is written next to the index and
    the ``k * rerank_factor`` best PQ candidates of a query are re-scored with it.  ``part`` = (i, S): index
    only every S-th shard starting at the i-th, one of S parts searched together with :func:`search_parts`
    (e.g. one part per machine)."""
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .embed import iter_embeddings, part_shards, read_manifest

    start_time = time.perf_counter()
    emb_dir, target = Path(embeddings), Path(os.path.abspath(os.fspath(out)))
    manifest = read_manifest(emb_dir)
    n, dim = sum(int(e["rows"]) for e in part_shards(manifest, part)), int(manifest["dim"])
    if n == 0:
        raise VectorIndexError(f"{str(emb_dir)!r} holds no embeddings: nothing to index")
    budget = int((max_memory_gb * 2**30) if max_memory_gb else psutil.virtual_memory().total // 2)
    if kind == "auto":
        spec = choose_spec(n, dim, memory_bytes=budget)
    elif kind == "flat":
        spec = IndexSpec("flat")
    elif kind == "hnsw":
        spec = IndexSpec("hnsw", hnsw_m=HNSW_M, ef_search=HNSW_EF_SEARCH, ef_construction=HNSW_EF_CONSTRUCTION)
    elif kind in ("ivf_flat", "ivf_pq"):
        code_size = _pq_m(dim, PQ_BYTES_PER_DIM_STANDALONE) if kind == "ivf_pq" else None
        spec = IndexSpec(kind, nlist=_nlist(n), nprobe=IVF_NPROBE, pq_m=code_size)
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
    code_bytes = n * ((spec.pq_m or 0) if spec.kind == "ivf_pq" else dim * 4) + n * 8
    if on_disk is None:
        on_disk = spec.needs_training and code_bytes > budget
    if on_disk and not spec.needs_training:
        raise VectorIndexError(f"on-disk inverted lists need an IVF index, not {spec.kind}")
    log(f"{n:,} vectors of dim {dim}: {spec.factory_string()} (nprobe {spec.nprobe}), on_disk={on_disk}")

    if target.exists() and not (target / META_FILE).is_file():  # checked before the build, not after it
        raise VectorIndexError(f"{str(target)!r} exists and is not a vector index folder: choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        index = make_index(spec, dim, manifest.get("metric", "ip"))
        t0 = time.perf_counter()
        if spec.needs_training:
            size = train_sample_size(spec, n)
            train(index, _training_sample(emb_dir, n, size, seed, part), seed)
            log(f"trained on {size:,} vectors in {time.perf_counter() - t0:.1f} s")
        ids: list[str] = []
        labels: list[str] = []
        blocks = []
        store = np.lib.format.open_memmap(tmp / VECTORS_FILE, "w+", np.float16, (n, dim)) if spec.rerank > 1 else None
        t0 = time.perf_counter()
        for i, (shard_ids, shard_labels, vec) in enumerate(iter_embeddings(emb_dir, part=part)):
            xids = np.arange(len(ids), len(ids) + len(shard_ids), dtype=np.int64)
            if on_disk:  # each shard into its own copy of the trained index, merged below
                block = faiss.clone_index(index)
                block.add_with_ids(vec, xids)
                blocks.append(str(tmp / f"block{i:05d}.index"))
                faiss.write_index(block, blocks[-1])
                del block
            elif spec.needs_training:
                index.add_with_ids(vec, xids)
            else:
                index.add(vec)
            if store is not None:
                store[len(ids) : len(ids) + len(shard_ids)] = vec
            ids.extend(shard_ids)
            labels.extend(shard_labels)
        if on_disk:
            from faiss.contrib.ondisk import merge_ondisk

            merge_ondisk(index, blocks, str(tmp / LISTS_FILE))
            for block_file in blocks:
                os.unlink(block_file)
        if store is not None:
            store.flush()
            del store
        log(f"added {len(ids):,} vectors in {time.perf_counter() - t0:.1f} s")
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "label": pa.array(labels, pa.string())}), tmp / IDS_FILE)
        meta = {
            "format": FORMAT,
            "version": 1,
            "spec": spec.to_dict(),
            "factory": spec.factory_string(),
            "metric": manifest.get("metric", "ip"),
            "dim": dim,
            "num_vectors": len(ids),
            "part": list(part) if part else None,
            "model_id": manifest.get("model_id"),
            "on_disk": bool(on_disk),
            "rerank_vectors": spec.rerank > 1,
            "lists_bytes": (tmp / LISTS_FILE).stat().st_size if on_disk else None,
            "index_bytes": (tmp / INDEX_FILE).stat().st_size,
            "build_seconds": round(time.perf_counter() - start_time, 3),
            "faiss_version": getattr(faiss, "__version__", None),
            "sha256": {INDEX_FILE: sha256_file(tmp / INDEX_FILE), IDS_FILE: sha256_file(tmp / IDS_FILE)},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        swap_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {target} in {meta['build_seconds']} s")
    return meta


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m model_pkg.gallery build --embeddings DIR --out DIR [...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m model_pkg.gallery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a faiss index folder from sharded embeddings (python -m model_pkg.embed)")
    b.add_argument("--embeddings", required=True, help="an embeddings folder written by python -m model_pkg.embed")
    b.add_argument("--out", required=True, help="the index folder to write (replaced atomically if it exists)")
    b.add_argument("--index", default="auto", choices=("auto", *KINDS), help="index kind (auto: by size, see choose_spec)")
    b.add_argument("--nlist", type=int, default=None, help="IVF cells (default: about 4 sqrt(N), a power of two)")
    b.add_argument("--nprobe", type=int, default=None, help=f"IVF cells scanned per query (default {IVF_NPROBE})")
    b.add_argument("--pq-m", type=int, default=None, help="IVF-PQ bytes per vector (default dim/4)")
    disk = b.add_mutually_exclusive_group()
    disk.add_argument(
        "--on-disk", dest="on_disk", action="store_true", default=None, help="inverted lists in a memory-mapped file"
    )
    disk.add_argument("--in-memory", dest="on_disk", action="store_false", help="never use on-disk inverted lists")
    b.add_argument(
        "--rerank",
        type=int,
        default=None,
        help=f"IVF-PQ: re-score k x this many candidates from a float16 copy (default {RERANK_FROM_DISK}; 1: none)",
    )
    b.add_argument("--max-memory-gb", type=float, default=None, help="memory the index may use (default: half the machine's)")
    b.add_argument("--part", default=None, help="I/S: index only every S-th embeddings shard from the I-th (one of S parts)")
    b.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .embed import EmbeddingsError

    part = None
    if args.part:
        try:
            i, count = (int(v) for v in args.part.split("/"))
        except ValueError:
            parser.error(f"--part must look like 0/4 (part I of S), got {args.part!r}")
        part = (i, count)
    try:
        return build_from_embeddings(
            args.embeddings,
            args.out,
            args.index,
            args.nlist,
            args.nprobe,
            args.pq_m,
            args.on_disk,
            args.max_memory_gb,
            args.seed,
            rerank_factor=args.rerank,
            part=part,
        )
    except (VectorIndexError, EmbeddingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
