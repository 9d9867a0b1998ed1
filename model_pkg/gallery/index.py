"""The gallery's vectors: the exact faiss index and the approximate one it switches to above a size (HNSW,
IVF-Flat, IVF-PQ with exact re-scoring: `model_pkg.vector_index`), labels, ids and metadata, add / remove /
search.  What callers pass in is checked first, in ``inputs``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from .. import vector_index as vi
from ..vector_index import spec as index_spec  # the size thresholds, read at call time (tests scale them down)
from .common import DEFAULT_MARGIN_THRESHOLD, MIN_DISTANCE, EmptyGalleryError, check_k, check_strings
from .inputs import check_metadata, check_settings, new_row_ids, prepare_vectors

__all__ = ["VectorStore"]


class VectorStore:
    """The vector half of :class:`~model_pkg.gallery.GalleryIndex` (its constructor arguments are documented there)."""

    def __init__(
        self,
        dim: int,
        metric: str = "ip",
        approximate_above: int = index_spec.IVF_MIN,
        model_id: str | None = None,
        *,
        score_threshold: float | None = None,
        margin_threshold: float = DEFAULT_MARGIN_THRESHOLD,
        ef_search: int = index_spec.HNSW_EF_SEARCH,
        ef_construction: int = index_spec.HNSW_EF_CONSTRUCTION,
        approximate_index: str = "auto",
    ) -> None:
        check_settings(
            dim,
            metric,
            approximate_above,
            model_id,
            approximate_index,
            ef_search,
            ef_construction,
            score_threshold,
            margin_threshold,
        )
        self.dim = int(dim)
        self.metric = metric
        self.approximate_above = int(approximate_above)
        self.model_id = model_id
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.margin_threshold = float(margin_threshold)
        self.ef_construction = int(ef_construction)
        self._ef_search = int(ef_search)
        self.calibration: dict[str, Any] | None = None
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
        kind = self._approx_spec.kind if self.is_approximate and self._approx_spec else "exact"
        return (
            f"GalleryIndex(dim={self.dim}, metric={self.metric!r}, vectors={len(self)}, "
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
