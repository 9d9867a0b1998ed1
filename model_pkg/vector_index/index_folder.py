"""A standalone vector-index folder: its files, :class:`VectorIndex` (load, verify, search) and
:func:`search_parts` (merging the parts of an index split across machines).

Separate from the build (``build``) so that searching a built index needs neither the embeddings reader
nor the build's memory planning; the build writes the files named here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..fileio import sha256_file
from .faiss_index import apply_search_params, rerank
from .spec import IndexSpec, VectorIndexError

__all__ = [
    "FORMAT",
    "IDS_FILE",
    "INDEX_FILE",
    "LISTS_FILE",
    "META_FILE",
    "VECTORS_FILE",
    "VectorIndex",
    "search_parts",
]

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
LISTS_FILE = "lists.ivfdata"
VECTORS_FILE = "vectors.f16.npy"  # float16 copy for exact re-ranking, memory-mapped (read k * rerank rows per query)
META_FILE = "vector_index.json"
FORMAT = "petmatch-vector-index"


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
