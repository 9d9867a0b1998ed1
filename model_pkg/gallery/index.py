"""The plain vector store: the exact faiss index and the approximate one it switches to above a size (HNSW,
IVF-Flat, IVF-PQ with exact re-scoring: `model_pkg.vector_index`), labels, ids and metadata, add / remove /
search, save / load (the files: ``storage``).  What callers pass in is checked first, in ``inputs``.  It decides
nothing: :class:`~model_pkg.gallery.GalleryIndex` holds one and votes over its neighbours; text search
(`dual_encoder.search`) uses one as it is."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from typing_extensions import Self

from .. import vector_index as vi
from ..vector_index import spec as index_spec  # the size thresholds, read at call time (tests scale them down)
from ..vector_index.spec import HNSW_M
from .common import FORMAT, FORMAT_VERSION, MIN_DISTANCE, EmptyGalleryError, check_k, check_strings
from .inputs import check_metadata, check_settings, new_row_ids, prepare_vectors
from .storage import read_folder, write_folder

__all__ = ["VectorStore"]


class VectorStore:
    """Labelled vectors in faiss: add, remove, search, save, load. The constructor's arguments are
    :class:`~model_pkg.gallery.GalleryIndex`'s but the thresholds (documented there); it holds one of these."""

    def __init__(
        self,
        dim: int,
        metric: str = "ip",
        approximate_above: int = index_spec.IVF_MIN,
        model_id: str | None = None,
        *,
        ef_search: int = index_spec.HNSW_EF_SEARCH,
        ef_construction: int = index_spec.HNSW_EF_CONSTRUCTION,
        approximate_index: str = "auto",
    ) -> None:
        check_settings(dim, metric, approximate_above, model_id, approximate_index, ef_search, ef_construction)
        self.dim = int(dim)
        self.metric = metric
        self.approximate_above = int(approximate_above)
        self.model_id = model_id
        self.ef_construction = int(ef_construction)
        self._ef_search = int(ef_search)
        self._flat = self._new_flat()
        self.approximate_index = approximate_index
        self._approx: faiss.Index | None = None
        self._approx_spec: vi.IndexSpec | None = None
        self._force_approximate = False
        self._labels: list[str] = []
        self._ids: list[str] = []
        self._id_set: set[str] = set()
        self._metadata: list[dict] = []
        self._next_id = 0

    # ----------------------------------------------------------------- basics
    def __len__(self) -> int:
        return int(self._flat.ntotal)

    def __repr__(self) -> str:
        return self.repr_as(type(self).__name__)

    def repr_as(self, name: str) -> str:
        """``name(dim=..., metric=..., vectors=..., ...)``: the repr of this store or of what holds it."""
        kind = self._approx_spec.kind if self.is_approximate and self._approx_spec else "exact"
        return (
            f"{name}(dim={self.dim}, metric={self.metric!r}, vectors={len(self)}, "
            f"identities={len(set(self._labels))}, index={kind}, model_id={self.model_id!r})"
        )

    @property
    def labels(self) -> list[str]:
        """Identity label of every stored vector, in insertion order (a copy)."""
        return list(self._labels)

    @property
    def identities(self) -> list[str]:
        """Sorted distinct labels."""
        return sorted(set(self._labels))

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def metadata(self) -> list[dict]:
        return list(self._metadata)

    @property
    def vectors(self) -> np.ndarray:
        """Copy of the stored (normalised for "ip") vectors, shape (N, dim)."""
        return np.array(self._vectors_view(), copy=True)

    @property
    def is_approximate(self) -> bool:
        """True when searches go to the approximate (HNSW or IVF) index."""
        return self._approx is not None and self._want_approximate()

    @property
    def approximate_spec(self) -> vi.IndexSpec | None:
        """Kind and parameters of the approximate index built (``None`` before one is built)."""
        return self._approx_spec

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"ef_search must be an integer >= 1, got {value!r}")
        self._ef_search = int(value)
        if self._approx is not None and self._approx_spec is not None and self._approx_spec.kind == "hnsw":
            self._approx_spec.ef_search = self._ef_search
            vi.apply_search_params(self._approx, self._approx_spec)

    # --------------------------------------------------------------- internals
    def _faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

    def _new_flat(self) -> faiss.IndexFlat:
        return faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)

    def _vectors_view(self) -> np.ndarray:
        """Zero-copy view of the flat index's storage; only valid while ``self._flat`` lives."""
        n = len(self)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return faiss.rev_swig_ptr(self._flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def _want_approximate(self) -> bool:
        return self._force_approximate or len(self) > self.approximate_above

    def _approximate_spec_for_size(self) -> vi.IndexSpec:
        n, kind = len(self), self.approximate_index
        if kind == "auto":
            kind = index_spec.choose_spec(n, self.dim, exact_vectors_kept=True).kind
        # approximate wanted where exact would do, or too few vectors to train IVF cells: HNSW
        if kind in ("flat", "hnsw") or n < index_spec.IVF_MIN_TRAIN:
            return index_spec.hnsw_spec(self._ef_search, self.ef_construction, rerank=index_spec.HNSW_RERANK)
        spec = index_spec.fast_scan_spec(max(n, index_spec.IVF_MIN), self.dim, exact_vectors_kept=True)
        nlist = min(spec.nlist or 1, n // index_spec.TRAIN_POINTS_PER_CELL)  # cells the vectors can train
        if kind == "ivf_flat":  # scores exactly already: nothing to re-rank
            return vi.IndexSpec("ivf_flat", nlist=nlist, nprobe=index_spec.IVF_NPROBE)
        return vi.IndexSpec(**{**spec.to_dict(), "nlist": nlist, "nprobe": min(spec.nprobe or 1, nlist)})

    def _build_approximate(self) -> None:
        spec = self._approximate_spec_for_size()
        self._approx = vi.build_index(self._vectors_view(), spec, self.metric)
        self._approx_spec = spec

    def _active_index(self) -> faiss.Index:
        if self._want_approximate():
            if self._approx is None:
                self._build_approximate()
            assert self._approx is not None  # _build_approximate sets it
            return self._approx
        return self._flat

    def _prepare(self, x: Any, what: str) -> np.ndarray:
        """``x`` checked and made ready to store or search (:func:`~.inputs.prepare_vectors`)."""
        return prepare_vectors(x, self.dim, self.metric, self.model_id, what)

    def _search_raw(self, vecs: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Similarities (Q, k') float32 best first, and row positions (Q, k') int64; k' = min(k, N)."""
        k = check_k(k)
        n = len(self)
        if n == 0:
            raise EmptyGalleryError("the gallery is empty: register animals with add(...) first")
        k_eff = min(k, n)
        index = self._flat if exact else self._active_index()
        rerank = 1 if index is self._flat or self._approx_spec is None else self._approx_spec.rerank
        if rerank > 1:  # IVF-PQ / HNSW-fp16 candidates re-scored exactly against the kept vectors
            _, cand = index.search(vecs, min(n, k_eff * rerank))
            dist, pos = vi.rerank(self._flat, vecs, cand, k_eff, self.metric)
        else:
            dist, pos = index.search(vecs, k_eff)
        if index is not self._flat:
            short = (pos < 0).any(axis=1)
            if short.any():  # the approximate index found fewer than k neighbours: answer those queries exactly
                d2, p2 = self._flat.search(np.ascontiguousarray(vecs[short]), k_eff)
                dist[short], pos[short] = d2, p2
        if self.metric == "ip":
            scores = dist.astype(np.float32)
        else:  # faiss returns squared L2 distances
            scores = -np.sqrt(np.maximum(dist, 0.0)).astype(np.float32)
        return scores, pos.astype(np.int64)

    def _distances(self, scores: np.ndarray) -> np.ndarray:
        d = (1.0 - scores.astype(np.float64)) if self.metric == "ip" else -scores.astype(np.float64)
        return np.maximum(d, MIN_DISTANCE)

    # ----------------------------------------------------------------- editing
    def add(
        self,
        embeddings: np.ndarray,
        labels: Sequence[str],
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict] | None = None,
    ) -> list[str]:
        """Register photos: ``embeddings`` (N, dim) with one identity ``label`` each.

        ``ids`` (unique strings; default: running numbers) and ``metadata`` (JSON-serialisable
        dicts, e.g. photo path) are optional.  Everything is validated before anything is
        stored, so a failed call leaves the gallery unchanged.  Returns the ids of the new rows.
        """
        vecs = self._prepare(embeddings, "embeddings")
        n = vecs.shape[0]
        labels = check_strings(labels, n, "labels")
        new_ids, nxt = new_row_ids(ids, n, self._id_set, self._next_id)
        meta = check_metadata(metadata, n)

        self._flat.add(vecs)
        if self._approx is not None:
            self._approx.add(vecs)
        self._labels.extend(labels)
        self._ids.extend(new_ids)
        self._id_set.update(new_ids)
        self._metadata.extend(meta)
        self._next_id = nxt
        return new_ids

    def remove(self, label: str) -> int:
        """Delete every vector of identity ``label``; returns how many. An IVF index keeps its training and takes the
        remaining vectors again at once; an HNSW graph is rebuilt on the next search."""
        keep = np.fromiter((lab != label for lab in self._labels), dtype=bool, count=len(self._labels))
        if keep.all():
            known = self.identities
            raise ValueError(
                f"no vectors with label {label!r} in the gallery ({len(known)} identities registered"
                + (f", e.g. {known[:5]}" if known else "")
                + ")"
            )
        vecs = self._vectors_view()[keep]  # fancy indexing copies before the old index goes away
        flat = self._new_flat()
        if len(vecs):
            flat.add(np.ascontiguousarray(vecs))
        self._flat = flat
        if self._approx is not None and self._approx_spec is not None and self._approx_spec.needs_training:
            # IVF: the trained cells and codes stay good for what is left; re-adding is a third of a rebuild's time
            self._approx.reset()
            if len(vecs):
                self._approx.add(np.ascontiguousarray(vecs))
        else:  # HNSW cannot delete: rebuilt from the exact vectors on the next search/save if still needed
            self._approx = self._approx_spec = None
        idx = np.flatnonzero(keep)
        self._labels = [self._labels[i] for i in idx]
        self._ids = [self._ids[i] for i in idx]
        self._id_set = set(self._ids)
        self._metadata = [self._metadata[i] for i in idx]
        return int((~keep).sum())

    def build_approximate(self, ef_search: int | None = None) -> None:
        """Build the approximate index now (whatever the size; rebuilt if there is one) and use it from now on."""
        if ef_search is not None:
            self.ef_search = ef_search
        self._force_approximate = True
        self._build_approximate()

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, k: int = 20, *, exact: bool = False
    ) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
        """Nearest gallery photos of each query.

        Returns ``(scores, labels, ids)``: ``scores`` float32 of shape (Q, min(k, len(self)))
        best first (cosine similarity for "ip", negated L2 distance for "l2"), and the matching
        labels and ids as lists of lists.  ``exact=True`` bypasses the approximate index.
        """
        scores, pos = self._search_raw(self._prepare(queries, "queries"), k, exact=exact)
        labels = [[self._labels[p] for p in row] for row in pos]
        ids = [[self._ids[p] for p in row] for row in pos]
        return scores, labels, ids

    # --------------------------------------------------------------- evaluation
    def _exact_similarity(self, q: np.ndarray) -> np.ndarray:
        """Exact similarity (Q, N) of prepared queries to every stored vector (float32 maths)."""
        v = self._vectors_view()
        dots = q @ v.T
        if self.metric == "ip":
            return dots.astype(np.float64)
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + np.einsum("ij,ij->i", v, v)[None, :] - 2.0 * dots
        return -np.sqrt(np.maximum(d2.astype(np.float64), 0.0))

    # ------------------------------------------------------------- persistence
    def _meta(self, policy: Mapping[str, Any] | None) -> dict[str, Any]:
        index_type = self._approx_spec.kind if self.is_approximate and self._approx_spec else "flat"
        return {
            "format": FORMAT,
            "version": 1 if index_type in ("flat", "hnsw") else FORMAT_VERSION,  # older code still reads these
            "dim": self.dim,
            "metric": self.metric,
            "model_id": self.model_id,
            "num_vectors": len(self),
            "index_type": index_type,
            "approximate_index": self.approximate_index,
            "vector_index": self._approx_spec.to_dict() if index_type != "flat" and self._approx_spec else None,
            "approximate_above": self.approximate_above,
            "force_approximate": self._force_approximate,
            "hnsw": {"M": HNSW_M, "ef_search": self._ef_search, "ef_construction": self.ef_construction},
            **(policy or {}),
            "next_id": self._next_id,
            "faiss_version": getattr(faiss, "__version__", None),
            "labels": self._labels,
            "ids": self._ids,
            "metadata": self._metadata,
        }

    def save(self, directory: str | os.PathLike, policy: Mapping[str, Any] | None = None) -> Path:
        """Write the store to ``directory`` atomically (:func:`~.storage.write_folder`); returns the folder path.

        Files: ``index.faiss`` (the active index: HNSW/IVF when approximate, else the flat one), ``vectors.npy``
        (the exact vectors), ``gallery.json`` (settings, labels, ids, metadata, model_id, format version, sha256 of
        the two binary files, and ``policy``: the fields of what decides on top of the store, a
        :class:`~model_pkg.gallery.GalleryIndex`'s thresholds).  ``directory`` must be empty, missing or hold only a
        gallery: other files in it are refused, since the folder is replaced whole.
        """
        index = self._active_index()  # builds the approximate index here if the store crossed approximate_above
        return write_folder(directory, index, self._vectors_view(), self._meta(policy))

    @classmethod
    def load(cls, directory: str | os.PathLike, expected_dim: int | None = None, expected_model_id: str | None = None) -> Self:
        """Load a store (or a gallery: its thresholds are left out) written by :meth:`save`, verifying it.

        Raises :class:`GalleryFileError` (a ``RuntimeError``) for a missing folder or file, a checksum mismatch,
        unreadable or inconsistent files; :class:`GalleryMismatchError` (a ``ValueError``) when ``expected_dim`` /
        ``expected_model_id`` differ from what the gallery was built with.  Never modifies the files, except to
        restore the previous gallery when a save was interrupted between its two renames (platforms without
        ``renameat2``).
        """
        return cls.load_with_meta(directory, expected_dim, expected_model_id)[0]

    @classmethod
    def load_with_meta(
        cls, directory: str | os.PathLike, expected_dim: int | None = None, expected_model_id: str | None = None
    ) -> tuple[Self, dict[str, Any]]:
        """:meth:`load`, and the ``gallery.json`` read (for the fields of a policy on top of the store)."""
        meta, index, vectors, kind = read_folder(directory, expected_dim, expected_model_id)
        n = len(meta["labels"])
        hp = meta.get("hnsw") or {}
        g = cls(
            int(meta["dim"]),
            meta["metric"],
            int(meta.get("approximate_above", 200_000)),
            meta.get("model_id"),
            ef_search=int(hp.get("ef_search", 64)),
            ef_construction=int(hp.get("ef_construction", 40)),
            approximate_index=meta.get("approximate_index", "auto"),
        )
        if kind != "flat":
            if n:
                g._flat.add(np.ascontiguousarray(vectors))
            spec = meta.get("vector_index") or {"kind": "hnsw", "hnsw_m": HNSW_M, "ef_construction": g.ef_construction}
            g._approx_spec = vi.IndexSpec.from_dict({**spec, "ef_search": g._ef_search} if kind == "hnsw" else spec)
            g._approx = index  # read_index returns the owning object, of the concrete type
            vi.apply_search_params(g._approx, g._approx_spec)
        else:
            g._flat = index  # type: ignore[assignment]
        del vectors
        g._force_approximate = bool(meta.get("force_approximate", False))
        g._labels = list(meta["labels"])
        g._ids = list(meta["ids"])
        g._id_set = set(g._ids)
        g._metadata = list(meta["metadata"])
        g._next_id = int(meta.get("next_id", n))
        return g, meta
