"""Faiss gallery of known animals: retrieval-based identification with confidence rejection.

A :class:`GalleryIndex` holds one embedding per registered photo (``add``), each with the
identity ``label`` of the animal, a unique ``id`` and a JSON-serialisable ``metadata`` dict.
A query photo is identified by searching its nearest gallery photos and letting them vote
(:meth:`GalleryIndex.classify`); the answer is rejected as *unknown* (no registered animal
is similar enough) or *reshoot* (two animals are about equally likely) when the evidence is
weak.

Rules
-----
* **Vectors.**  float32 embeddings of dimension ``dim``.  For ``metric="ip"`` every vector
  (gallery and query) is L2-normalised on ``add``/``search`` and the similarity is the cosine
  similarity.  For ``metric="l2"`` vectors are stored as given (they are expected to be
  normalised already) and searched with the Euclidean distance.  NaN/inf rows and all-zero
  rows are refused (a ``ValueError`` names the rows; nothing is added).
* **Scores.**  Every score returned is a *similarity* (higher = more alike): the cosine
  similarity for ``"ip"``, the *negated* Euclidean distance for ``"l2"``.  So
  ``score_threshold`` means "at least this similar" for both metrics.
* **Index.**  Exact search (``IndexFlatIP`` / ``IndexFlatL2``) by default.  Once the gallery
  holds more than ``approximate_above`` vectors, the next ``search``/``classify``/``save``
  builds an approximate index and uses it; :meth:`GalleryIndex.build_approximate` builds it now
  whatever the size.  Which one (``approximate_index="auto"``) depends on the size
  (:func:`model_pkg.vector_index.choose_spec`, numbers in bench/README.md "Gallery at scale"):
  HNSW (``IndexHNSWFlat``, M=32, ``ef_search`` configurable) below ``vector_index.IVF_MIN``
  vectors, above it IVF-PQ whose candidates are re-scored exactly against the kept vectors.
  The exact vectors are always kept (in the flat index, and in ``vectors.npy`` on disk) so the
  approximate index can be rebuilt, e.g. after :meth:`GalleryIndex.remove`.  If it ever returns
  fewer than ``k`` neighbours for a query, that query is answered by the exact index instead.
* **Voting.**  ``classify`` takes the top-``k`` neighbours, weights each by ``1/d`` where
  ``d`` is its distance (``"ip"``: ``d = 1 - cosine``; ``"l2"``: the Euclidean distance),
  clamped below at ``1e-6``, and sums the weights per identity.  ``confidence`` is the winning
  identity's share of the total weight; ``margin`` is the winner's share minus the runner-up's
  (0 for the runner-up when only one identity is among the neighbours).
* **Rejection.**  ``reason="unknown"`` when the best neighbour's similarity ``top_score`` is
  below ``score_threshold`` (``None`` = never; the default until :meth:`GalleryIndex.calibrate`
  sets it); otherwise ``reason="reshoot"`` when ``margin < margin_threshold``
  (default 0.05, so an exact tie is always a reshoot).  A rejected prediction has
  ``label=None``; its ``candidates`` still list the best guesses.
* **Files.**  ``save(directory)`` writes ``index.faiss``, ``vectors.npy`` and ``gallery.json``
  (with the sha256 of both binary files) into a temporary sibling folder and then swaps it in
  as a whole, so a crash never leaves a half-written gallery in ``directory`` and never
  replaces a good gallery with a bad one.  ``load`` verifies the checksums, the file
  consistency, and optionally the embedding dimension and the ``model_id`` of the embedder.

Errors that are the caller's input are ``ValueError`` (:class:`GalleryMismatchError` for a
gallery/embedder mismatch); problems with the gallery's state or files are ``RuntimeError``
(:class:`EmptyGalleryError`, :class:`GalleryFileError`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import vector_index as vi
from .fileio import backup_path, sha256_file, swap_folder
from .metrics import choose_threshold, open_set_metrics, retrieval_metrics

__all__ = [
    "GalleryIndex",
    "Prediction",
    "evaluate_gallery",
    "GalleryError",
    "EmptyGalleryError",
    "GalleryFileError",
    "GalleryMismatchError",
    "INDEX_FILE",
    "VECTORS_FILE",
    "META_FILE",
]

FORMAT = "petmatch-gallery"
FORMAT_VERSION = 2  # 2: IVF indexes; flat and HNSW galleries are still written as version 1
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
META_FILE = "gallery.json"
GALLERY_FILES = (INDEX_FILE, VECTORS_FILE, META_FILE)

HNSW_M = 32
MIN_DISTANCE = 1e-6  # clamp for the 1/d vote weight (an exact duplicate gets weight 1e6)
DEFAULT_MARGIN_THRESHOLD = 0.05
_MIN_MARGIN_CANDIDATE = 1e-6  # calibrate never goes below this: exact ties stay "reshoot"
_MAX_MARGIN_CANDIDATES = 64
_MAX_CANDIDATES = 5  # classes listed in Prediction.candidates
_ZERO_NORM = 1e-12


# --------------------------------------------------------------------------- #
# Errors and results
# --------------------------------------------------------------------------- #
class GalleryError(RuntimeError):
    """A problem with the gallery's state or its files."""


class EmptyGalleryError(GalleryError):
    """search/classify on a gallery without vectors."""


class GalleryFileError(GalleryError):
    """A saved gallery is missing files, corrupt, or inconsistent."""


class GalleryMismatchError(ValueError):
    """Vectors/gallery made by a different embedder (dimension or model_id differs)."""


@dataclass
class Prediction:
    """Result of :meth:`GalleryIndex.classify` for one query.

    * ``label`` -- the identified animal, or ``None`` when the prediction is rejected.
    * ``confidence`` -- the winning identity's share (0-1) of the total vote weight.
    * ``top_score`` -- similarity of the best neighbour (cosine for "ip", -L2 distance for "l2").
    * ``margin`` -- winner's vote share minus the runner-up's.
    * ``accepted`` -- ``reason is None``.
    * ``reason`` -- ``None``, ``"unknown"`` (``top_score < score_threshold``) or
      ``"reshoot"`` (``margin < margin_threshold``).
    * ``candidates`` -- up to 5 ``(label, vote share)`` pairs, best first (shares of the
      total 1/d weight, so ``candidates[0][1] == confidence``).
    """

    label: str | None
    confidence: float
    top_score: float
    margin: float
    accepted: bool
    reason: str | None
    candidates: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidates"] = [[lab, float(w)] for lab, w in self.candidates]
        return out


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer >= 1 (number of neighbours), got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1 (number of neighbours to search), got {k}")
    return int(k)


def _check_strings(values: Any, n: int, name: str, what: str = "embeddings") -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list of strings (one per row of {what}), got {type(values).__name__}")
    out = list(values)
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries but {what} has {n} rows: pass exactly one per row")
    bad = [i for i, v in enumerate(out) if not isinstance(v, str) or not v]
    if bad:
        examples = ", ".join(f"[{i}]={out[i]!r}" for i in bad[:5])
        raise ValueError(f"{name} must be non-empty strings; bad entries: {examples}")
    return out


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _above(x: float) -> float:
    y = x + 1.0
    return float(y) if (y > x and math.isfinite(y)) else float(np.nextafter(x, np.inf))


def _midpoint(a: float, b: float) -> float:
    mid = a / 2.0 + b / 2.0
    return float(mid) if a < mid <= b else float(b)


def _weighted_threshold(pos: np.ndarray, neg: np.ndarray, w_pos: float, w_neg: float) -> float | None:
    """Threshold t maximising ``w_pos * #(pos >= t) + w_neg * #(neg < t)``.

    Same candidates and tie rule as :func:`model_pkg.metrics.choose_threshold` (smallest
    score, midpoints of neighbouring distinct scores, above the largest; ties -> smallest).
    ``None`` when there are no scores at all (any threshold is as good).
    """
    scores = np.concatenate([pos, neg]).astype(np.float64)
    if scores.size == 0:
        return None
    uniq, inv = np.unique(scores, return_inverse=True)
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    pos_per = np.bincount(inv, weights=is_pos * w_pos, minlength=uniq.size)
    neg_per = np.bincount(inv, weights=(1.0 - is_pos) * w_neg, minlength=uniq.size)
    gain = np.concatenate([[0.0], np.cumsum(neg_per)]) + (pos_per.sum() - np.concatenate([[0.0], np.cumsum(pos_per)]))
    j = int(np.argmax(gain))
    if j == 0:
        return float(uniq[0])
    if j == uniq.size:
        return _above(float(uniq[-1]))
    return _midpoint(float(uniq[j - 1]), float(uniq[j]))


# --------------------------------------------------------------------------- #
# The gallery
# --------------------------------------------------------------------------- #
class GalleryIndex:
    """Faiss gallery of labelled embeddings with kNN voting and unknown/reshoot rejection.

    Args:
        dim: embedding dimension.
        metric: ``"ip"`` (cosine similarity on L2-normalised vectors) or ``"l2"``.
        approximate_above: switch to the approximate index when the gallery holds more than this
            many vectors (default ``vector_index.IVF_MIN``, 100,000: up to there an exact search takes
            milliseconds; bench/README.md, "Gallery at scale").
        model_id: which embedder made the vectors (e.g. model folder + config hash); recorded
            in ``gallery.json`` so ``load(expected_model_id=...)`` can refuse a gallery made by
            another model.
        score_threshold: minimum ``top_score`` to accept (``None``: never reject as unknown).
        margin_threshold: minimum vote-share margin to accept (else "reshoot").
        ef_search: HNSW search breadth (higher = better recall, slower).
        ef_construction: HNSW build breadth.
        approximate_index: ``"auto"`` (by size, :func:`model_pkg.vector_index.choose_spec`), ``"hnsw"``,
            ``"ivf_flat"`` or ``"ivf_pq"`` (IVF needs ``vector_index.IVF_MIN_TRAIN`` vectors; a smaller
            gallery uses HNSW).
    """

    def __init__(
        self,
        dim: int,
        metric: str = "ip",
        approximate_above: int = vi.IVF_MIN,
        model_id: str | None = None,
        *,
        score_threshold: float | None = None,
        margin_threshold: float = DEFAULT_MARGIN_THRESHOLD,
        ef_search: int = 64,
        ef_construction: int = 40,
        approximate_index: str = "auto",
    ) -> None:
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
        self.dim = int(dim)
        self.metric = metric
        self.approximate_above = int(approximate_above)
        self.model_id = model_id
        if score_threshold is not None and math.isnan(float(score_threshold)):
            raise ValueError("score_threshold is NaN: pass a number, or None to never reject as unknown")
        if math.isnan(float(margin_threshold)):
            raise ValueError("margin_threshold is NaN: pass a number in [0, 1]")
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
            kind = vi.choose_spec(n, self.dim, exact_vectors_kept=True).kind
        if kind in ("flat", "hnsw") or n < vi.IVF_MIN_TRAIN:  # approximate wanted where exact would do, or too few to train IVF
            return vi.IndexSpec("hnsw", hnsw_m=HNSW_M, ef_search=self._ef_search, ef_construction=self.ef_construction)
        ivf = vi.choose_spec(max(n, vi.IVF_MIN), self.dim, exact_vectors_kept=True)
        return vi.IndexSpec(
            kind,
            nlist=min(int(ivf.nlist or 1), n // vi.TRAIN_POINTS_PER_CELL),
            nprobe=ivf.nprobe,
            pq_m=ivf.pq_m if kind == "ivf_pq" else None,
            rerank=ivf.rerank if kind == "ivf_pq" else 1,  # IVF-Flat scores exactly already
        )

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
        """float32, 2-D, C-contiguous, finite, non-zero; L2-normalised for "ip" (never in place)."""
        try:
            arr = np.array(x, dtype=np.float32, copy=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} must be a numeric array of shape (N, {self.dim}): {exc}") from exc
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"{what} must be a 2-D array of shape (N, {self.dim}), got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"{what} has no rows: pass at least one vector of dimension {self.dim}")
        if arr.shape[1] != self.dim:
            raise GalleryMismatchError(
                f"{what} have dimension {arr.shape[1]} but this gallery holds {self.dim}-dimensional vectors "
                f"(model_id={self.model_id!r}): the gallery was built with another embedder. "
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
        zero = norms <= _ZERO_NORM
        if zero.any():
            rows = np.flatnonzero(zero)
            raise ValueError(
                f"{what} row(s) {rows[:10].tolist()}{' ...' if rows.size > 10 else ''} are zero vectors, "
                "which carry no identity and cannot be normalised: embed those photos again or drop them "
                "(nothing was changed)"
            )
        if self.metric == "ip":
            arr /= norms[:, None].astype(np.float32)
        return np.ascontiguousarray(arr)

    def _search_raw(self, vecs: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Similarities (Q, k') float32 best first, and row positions (Q, k') int64; k' = min(k, N)."""
        k = _check_k(k)
        n = len(self)
        if n == 0:
            raise EmptyGalleryError("the gallery is empty: register animals with add(...) first")
        k_eff = min(k, n)
        index = self._flat if exact else self._active_index()
        rerank = 1 if index is self._flat or self._approx_spec is None else self._approx_spec.rerank
        if rerank > 1:  # IVF-PQ candidates re-scored exactly against the kept vectors
            _, cand = index.search(vecs, min(n, k_eff * rerank))
            dist, pos = vi.rerank(self._vectors_view(), vecs, cand, k_eff, self.metric)
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

    def _vote(self, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[str], list[list[tuple[str, float]]]]:
        """Weighted kNN vote: (top_score (Q,), margin (Q,), best label per query, shares per query)."""
        scores, pos = self._search_raw(vecs, k)
        weights = 1.0 / self._distances(scores)
        top = scores[:, 0].astype(np.float64)
        margin = np.empty(len(pos))
        best: list[str] = []
        shares_all: list[list[tuple[str, float]]] = []
        for i in range(len(pos)):
            acc: dict[str, float] = {}  # insertion order = rank of each class's best neighbour
            for p, w in zip(pos[i], weights[i]):
                lab = self._labels[p]
                acc[lab] = acc.get(lab, 0.0) + float(w)
            total = sum(acc.values())
            ranked = sorted(acc.items(), key=lambda kv: -kv[1])  # stable: ties -> nearer class first
            shares = [(lab, w / total) for lab, w in ranked]
            margin[i] = shares[0][1] - (shares[1][1] if len(shares) > 1 else 0.0)
            best.append(shares[0][0])
            shares_all.append(shares)
        return top, margin, best, shares_all

    def _reasons(self, top: np.ndarray, margin: np.ndarray) -> list[str | None]:
        unknown = np.zeros(top.shape, bool) if self.score_threshold is None else top < self.score_threshold
        reshoot = margin < self.margin_threshold
        return ["unknown" if u else ("reshoot" if r else None) for u, r in zip(unknown, reshoot)]

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
        labels = _check_strings(labels, n, "labels")
        if ids is None:
            new_ids, nxt = [], self._next_id
            for _ in range(n):
                while str(nxt) in self._id_set:
                    nxt += 1
                new_ids.append(str(nxt))
                nxt += 1
        else:
            new_ids = _check_strings(ids, n, "ids")
            dup = len(set(new_ids)) != n
            clash = sorted(set(new_ids) & self._id_set)
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
            nxt = self._next_id
        meta: list[dict]
        if metadata is None:
            meta = [{} for _ in range(n)]
        else:
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
                    raise ValueError(
                        f"metadata[{i}] is not JSON-serialisable ({exc}): use str/int/float/bool/list/dict values"
                    ) from exc
            meta = [dict(m) for m in meta]

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
        """Delete every vector of identity ``label`` and rebuild the index; returns how many."""
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
        self._approx = self._approx_spec = None  # rebuilt from the exact vectors on the next search/save if still needed
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

    def classify(self, queries: np.ndarray, k: int = 20) -> list[Prediction]:
        """Identify each query by 1/d-weighted voting over its ``k`` nearest gallery photos.

        See the module docstring for the voting and rejection rules.
        """
        top, margin, best, shares = self._vote(self._prepare(queries, "queries"), k)
        out = []
        for i, reason in enumerate(self._reasons(top, margin)):
            out.append(
                Prediction(
                    label=best[i] if reason is None else None,
                    confidence=float(shares[i][0][1]),
                    top_score=float(top[i]),
                    margin=float(margin[i]),
                    accepted=reason is None,
                    reason=reason,
                    candidates=[(lab, float(w)) for lab, w in shares[i][:_MAX_CANDIDATES]],
                )
            )
        return out

    # -------------------------------------------------------------- calibration
    def calibrate(
        self,
        known_queries: np.ndarray,
        known_labels: Sequence[str],
        unknown_queries: np.ndarray,
        target: str = "balanced",
        k: int = 20,
        fit_margin: bool = True,
    ) -> dict[str, Any]:
        """Choose ``score_threshold`` and ``margin_threshold`` on validation queries and store them.

        ``known_queries`` are photos of registered animals (*not* the gallery photos themselves),
        ``known_labels`` their identities; ``unknown_queries`` are photos of animals that are not
        in the gallery.  With the same ``k`` that ``classify`` will use:

        * a known query is **right** when it is accepted (``top_score >= score_threshold`` and
          ``margin >= margin_threshold``) *and* the voted label is its true label; accepted with
          the wrong label and rejected both count as failures;
        * an unknown query is **right** when it is rejected (unknown or reshoot).

        ``known_accuracy`` = right known / #known, ``unknown_rejection`` = right unknown /
        #unknown.  ``target="balanced"`` (default) maximises the balanced accuracy
        ``(known_accuracy + unknown_rejection) / 2``; ``target="accuracy"`` maximises the plain
        fraction of right queries over both sets (score threshold by
        :func:`model_pkg.metrics.choose_threshold`).  Search: for each margin candidate (1e-6 --
        so exact ties stay "reshoot" -- and up to 64 midpoints between observed margins) the best
        score threshold is found exactly by a sweep over the midpoints of the observed top
        scores; the best pair wins, ties going to the smaller margin threshold and then the
        smaller score threshold.  The chosen numbers are optimistic on this data: report test
        numbers with :meth:`evaluate` on other queries.  ``fit_margin=False`` keeps the current
        ``margin_threshold`` and fits only the score threshold.

        Returns ``score_threshold``, ``margin_threshold``, ``target``, ``k``, and at those
        thresholds on the validation queries: ``known_accuracy``, ``unknown_rejection``,
        ``balanced_accuracy``, ``accuracy``, ``known_acceptance`` (accepted whatever the label),
        ``known_misidentified`` (accepted with a wrong label), plus ``open_set_auroc`` of the top
        score and ``num_known`` / ``num_unknown``.
        """
        if target not in ("balanced", "accuracy"):
            raise ValueError(f"target must be 'balanced' or 'accuracy', got {target!r}")
        k = _check_k(k)
        kq = self._prepare(known_queries, "known_queries")
        kl = _check_strings(known_labels, kq.shape[0], "known_labels", "known_queries")
        uq = self._prepare(unknown_queries, "unknown_queries")
        if len(self) == 0:
            raise EmptyGalleryError("the gallery is empty: register animals with add(...) first")
        registered = set(self._labels)
        stray = sorted(set(kl) - registered)
        if stray:
            raise ValueError(
                f"known_labels {stray[:5]} are not registered in the gallery: pass those photos in "
                "unknown_queries, or add(...) the animals first"
            )
        top_k, margin_k, best_k, _ = self._vote(kq, k)
        top_u, margin_u, _, _ = self._vote(uq, k)
        correct = np.array([b == t for b, t in zip(best_k, kl)])
        n_k, n_u = len(kl), uq.shape[0]

        uniq = np.unique(np.concatenate([margin_k, margin_u]))
        mids = (uniq[:-1] + uniq[1:]) / 2.0
        mids = mids[mids > _MIN_MARGIN_CANDIDATE]
        if mids.size > _MAX_MARGIN_CANDIDATES:
            mids = np.unique(np.quantile(mids, np.linspace(0.0, 1.0, _MAX_MARGIN_CANDIDATES)))
        margin_cands = np.concatenate([[_MIN_MARGIN_CANDIDATE], mids]) if fit_margin else np.array([self.margin_threshold])

        # integer weights make the objective exact: balanced = (n_u*known_right + n_k*unknown_right) / (2 n_k n_u)
        w_k, w_u = (n_u, n_k) if target == "balanced" else (1, 1)
        best: tuple[int, float, float | None] | None = None
        for m in margin_cands:
            eligible = correct & (margin_k >= m)  # known queries that the score threshold can still get right
            blocked = margin_u < m  # unknown queries already rejected as "reshoot"
            pos, neg = top_k[eligible], top_u[~blocked]
            thr: float | None
            if target == "accuracy" and pos.size and neg.size:
                thr = choose_threshold(
                    np.concatenate([np.ones(pos.size, int), np.zeros(neg.size, int)]), np.concatenate([pos, neg])
                )
            else:
                thr = _weighted_threshold(pos, neg, w_k, w_u)
            known_right = int((pos >= thr).sum()) if thr is not None else int(pos.size)
            unknown_right = int(blocked.sum()) + (int((neg < thr).sum()) if thr is not None else 0)
            value = w_k * known_right + w_u * unknown_right
            if best is None or value > best[0]:
                best = (value, float(m), thr)
        assert best is not None
        _, m_best, s_best = best
        self.score_threshold = s_best
        self.margin_threshold = m_best

        accepted_k = np.array([r is None for r in self._reasons(top_k, margin_k)])
        rejected_u = np.array([r is not None for r in self._reasons(top_u, margin_u)])
        known_acc = float(np.mean(accepted_k & correct))
        unk_rej = float(np.mean(rejected_u))
        result = {
            "score_threshold": s_best,
            "margin_threshold": m_best,
            "target": target,
            "k": k,
            "known_accuracy": known_acc,
            "unknown_rejection": unk_rej,
            "balanced_accuracy": (known_acc + unk_rej) / 2.0,
            "accuracy": float((np.sum(accepted_k & correct) + np.sum(rejected_u)) / (n_k + n_u)),
            "known_acceptance": float(np.mean(accepted_k)),
            "known_misidentified": float(np.mean(accepted_k & ~correct)),
            "open_set_auroc": open_set_metrics(top_k, top_u)["open_set_auroc"],
            "num_known": n_k,
            "num_unknown": n_u,
        }
        self.calibration = dict(result)
        return result

    # --------------------------------------------------------------- evaluation
    def _exact_similarity(self, q: np.ndarray) -> np.ndarray:
        """Exact similarity (Q, N) of prepared queries to every stored vector (float32 maths)."""
        v = self._vectors_view()
        dots = q @ v.T
        if self.metric == "ip":
            return dots.astype(np.float64)
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + np.einsum("ij,ij->i", v, v)[None, :] - 2.0 * dots
        return -np.sqrt(np.maximum(d2.astype(np.float64), 0.0))

    def evaluate(
        self,
        query_embeddings: np.ndarray,
        query_labels: Sequence[str],
        unknown_labels: Iterable[str] = (),
        k: int = 20,
    ) -> dict[str, Any]:
        """Retrieval, identification and open-set numbers of this gallery on labelled queries.

        Queries whose label is in ``unknown_labels`` are *unknown* (that animal must not be in
        the gallery); all others must be registered identities.  Keys:

        * ``rank1``, ``rank5``, ``rank10`` (percent), ``map``, ``mrr`` -- exact photo-level
          retrieval of the known queries (:func:`model_pkg.metrics.retrieval_metrics`).
        * ``classification_accuracy`` -- voted label right on known queries, ignoring rejection.
        * ``known_accuracy`` -- known queries accepted with the right label; ``known_acceptance``,
          ``known_misidentified`` (accepted, wrong label); ``unknown_rejection`` -- unknown
          queries rejected; ``balanced_accuracy`` -- mean of the two (all at the gallery's
          ``score_threshold`` / ``margin_threshold``, reported too).
        * ``open_set_auroc`` -- known vs unknown queries by ``top_score``
          (:func:`model_pkg.metrics.open_set_metrics`).
        * ``unknown_rejection``, ``balanced_accuracy``, ``open_set_auroc`` are ``None`` without
          unknown queries.  Plus counts and ``k``.
        """
        k = _check_k(k)
        q = self._prepare(query_embeddings, "query_embeddings")
        ql = _check_strings(query_labels, q.shape[0], "query_labels", "query_embeddings")
        if len(self) == 0:
            raise EmptyGalleryError("the gallery is empty: register animals with add(...) first")
        unknown = set(unknown_labels)
        registered = set(self._labels)
        overlap = sorted(unknown & registered)
        if overlap:
            raise ValueError(f"unknown_labels {overlap[:5]} are registered in the gallery: an unknown identity must not be in it")
        stray = sorted({lab for lab in ql if lab not in unknown and lab not in registered})
        if stray:
            raise ValueError(f"query labels {stray[:5]} are neither registered in the gallery nor listed in unknown_labels")
        is_unknown = np.array([lab in unknown for lab in ql])
        known_idx = np.flatnonzero(~is_unknown)
        if known_idx.size == 0:
            raise ValueError("every query is unknown: need queries of registered identities to evaluate identification")

        # exact retrieval metrics, in query chunks so the (chunk, N) similarity stays small
        ks = (1, 5, 10)
        chunk = max(1, 4_000_000 // max(1, len(self)))
        sums = {f"r{kk}": 0.0 for kk in ks} | {"map": 0.0, "mrr": 0.0}
        gl = np.asarray(self._labels)
        for start in range(0, known_idx.size, chunk):
            rows = known_idx[start : start + chunk]
            r = retrieval_metrics([ql[i] for i in rows], gl, self._exact_similarity(q[rows]), ks=ks)
            for key in sums:
                sums[key] += r[key] * r["num_queries"]
        n_known = int(known_idx.size)

        top, margin, best, _ = self._vote(q, k)
        reasons = self._reasons(top, margin)
        accepted = np.array([r is None for r in reasons])
        correct = np.array([b == t for b, t in zip(best, ql)])
        known = ~is_unknown
        out: dict[str, Any] = {
            "rank1": sums["r1"] / n_known,
            "rank5": sums["r5"] / n_known,
            "rank10": sums["r10"] / n_known,
            "map": sums["map"] / n_known,
            "mrr": sums["mrr"] / n_known,
            "classification_accuracy": float(np.mean(correct[known])),
            "known_accuracy": float(np.mean((accepted & correct)[known])),
            "known_acceptance": float(np.mean(accepted[known])),
            "known_misidentified": float(np.mean((accepted & ~correct)[known])),
            "unknown_rejection": None,
            "balanced_accuracy": None,
            "open_set_auroc": None,
            "score_threshold": self.score_threshold,
            "margin_threshold": self.margin_threshold,
            "k": k,
            "num_known": n_known,
            "num_unknown": int(is_unknown.sum()),
            "num_gallery": len(self),
            "num_identities": len(registered),
        }
        if is_unknown.any():
            out["unknown_rejection"] = float(np.mean(~accepted[is_unknown]))
            out["balanced_accuracy"] = (out["known_accuracy"] + out["unknown_rejection"]) / 2.0
            out["open_set_auroc"] = open_set_metrics(top[known], top[is_unknown])["open_set_auroc"]
        return out

    # ------------------------------------------------------------- persistence
    def _meta(self) -> dict[str, Any]:
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
            "score_threshold": self.score_threshold,
            "margin_threshold": self.margin_threshold,
            "calibration": self.calibration,
            "next_id": self._next_id,
            "faiss_version": getattr(faiss, "__version__", None),
            "labels": self._labels,
            "ids": self._ids,
            "metadata": self._metadata,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the gallery to ``directory`` atomically; returns the folder path.

        Files: ``index.faiss`` (the active index: HNSW/IVF when approximate, else the flat one),
        ``vectors.npy`` (the exact vectors), ``gallery.json`` (settings, labels, ids, metadata,
        thresholds, model_id, format version, sha256 of the two binary files).  Everything is
        written and fsynced in a temporary sibling folder, then swapped with ``directory`` in
        one atomic step (Linux ``renameat2``; elsewhere two renames, rolled back on error and
        recovered by :meth:`load` after a hard crash).  ``directory`` must be empty, missing or
        hold only a gallery: other files in it are refused, since the folder is replaced whole.
        """
        target = Path(os.path.abspath(os.fspath(directory)))
        if target.exists():
            if not target.is_dir():
                raise ValueError(f"cannot save the gallery to {target}: it exists and is not a folder")
            foreign = sorted(set(os.listdir(target)) - set(GALLERY_FILES))
            if foreign:
                raise ValueError(
                    f"cannot save the gallery to {target}: the folder also holds {foreign[:5]}; a gallery "
                    "is saved into its own folder and replaced as a whole, so use an empty or gallery-only folder"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        index = self._active_index()  # builds the approximate index here if the gallery crossed approximate_above
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
        os.mkdir(tmp)
        try:
            faiss.write_index(index, str(tmp / INDEX_FILE))
            with open(tmp / VECTORS_FILE, "wb") as fh:
                np.save(fh, self._vectors_view(), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_file(tmp / INDEX_FILE)
            meta = self._meta()
            meta["sha256"] = {INDEX_FILE: sha256_file(tmp / INDEX_FILE), VECTORS_FILE: sha256_file(tmp / VECTORS_FILE)}
            with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
                json.dump(meta, fh, allow_nan=False)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            swap_folder(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(target.parent)
        return target

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        expected_dim: int | None = None,
        expected_model_id: str | None = None,
    ) -> GalleryIndex:
        """Load a gallery written by :meth:`save`, verifying it.

        Raises :class:`GalleryFileError` (a ``RuntimeError``) for a missing folder or file, a
        checksum mismatch, unreadable or inconsistent files; :class:`GalleryMismatchError` (a
        ``ValueError``) when ``expected_dim`` / ``expected_model_id`` differ from what the
        gallery was built with.  Never modifies the files, except to restore the previous
        gallery when a save was interrupted between its two renames (platforms without
        ``renameat2``).
        """
        d = Path(os.path.abspath(os.fspath(directory)))
        if not d.exists():
            backup = backup_path(d)
            if backup.is_dir():
                warnings.warn(
                    f"gallery folder {d} is missing but {backup} (left by an interrupted save) exists: restoring it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                try:
                    os.rename(backup, d)
                except OSError:
                    d = backup
            else:
                raise GalleryFileError(
                    f"gallery folder {d} does not exist: check the path, or build a gallery with add(...) and save(...)"
                )
        if not d.is_dir():
            raise GalleryFileError(f"gallery path {d} is not a folder")
        missing = [f for f in GALLERY_FILES if not (d / f).is_file()]
        if missing:
            raise GalleryFileError(
                f"gallery folder {d} is missing {', '.join(missing)}: the gallery is incomplete; "
                "restore the folder from a backup or rebuild the gallery"
            )
        meta_path = d / META_FILE
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GalleryFileError(
                f"gallery metadata file {meta_path} is corrupt (not valid JSON: {exc}): restore it or rebuild the gallery"
            ) from exc
        required = ("format", "version", "dim", "metric", "labels", "ids", "metadata", "sha256")
        if not isinstance(meta, dict) or any(key not in meta for key in required) or meta.get("format") != FORMAT:
            raise GalleryFileError(
                f"{meta_path} is not a petmatch gallery file (missing fields or wrong format): restore it or rebuild the gallery"
            )
        if not isinstance(meta["version"], int) or meta["version"] > FORMAT_VERSION:
            raise GalleryFileError(
                f"gallery in {d} has format version {meta['version']}, newer than this code supports "
                f"({FORMAT_VERSION}): update petmatch"
            )
        dim, model_id = int(meta["dim"]), meta.get("model_id")
        if expected_dim is not None and int(expected_dim) != dim:
            raise GalleryMismatchError(
                f"gallery in {d} holds {dim}-dimensional vectors but the model produces {int(expected_dim)}-dimensional "
                f"embeddings: the gallery was built with another embedder (model_id={model_id!r}); rebuild the "
                "gallery with this model or use the model that built it"
            )
        if expected_model_id is not None and model_id != expected_model_id:
            raise GalleryMismatchError(
                f"gallery in {d} was built by model {model_id!r}, not by {expected_model_id!r}: embeddings of "
                "different models are not comparable; rebuild the gallery with the current model "
                "(add(...) + save(...)) or use the model that built it"
            )
        for name, what in ((INDEX_FILE, "index"), (VECTORS_FILE, "vectors")):
            if sha256_file(d / name) != meta["sha256"].get(name):
                raise GalleryFileError(
                    f"gallery {what} file {d / name} is corrupt (checksum mismatch): restore it or rebuild the gallery"
                )
        try:
            index = faiss.read_index(str(d / INDEX_FILE))
        except RuntimeError as exc:
            raise GalleryFileError(
                f"gallery index file {d / INDEX_FILE} is corrupt (faiss cannot read it: {exc}): restore it or rebuild the gallery"
            ) from exc
        try:
            vectors = np.load(d / VECTORS_FILE, mmap_mode="r", allow_pickle=False)  # checked, not copied
        except (ValueError, OSError, EOFError) as exc:
            raise GalleryFileError(
                f"gallery vectors file {d / VECTORS_FILE} is corrupt ({exc}): restore it or rebuild the gallery"
            ) from exc
        n = len(meta["labels"])
        problems = []
        if vectors.dtype != np.float32 or vectors.shape != (n, dim):
            problems.append(f"vectors.npy has shape {vectors.shape} {vectors.dtype}, expected ({n}, {dim}) float32")
        if index.ntotal != n or index.d != dim:
            problems.append(f"index.faiss holds {index.ntotal} vectors of dim {index.d}, expected {n} of dim {dim}")
        if len(meta["ids"]) != n or len(meta["metadata"]) != n:
            problems.append("labels, ids and metadata have different lengths")
        try:
            kind = vi.kind_of(index)
        except vi.VectorIndexError:
            kind = type(faiss.downcast_index(index)).__name__
        if meta.get("index_type", "flat") != kind:
            problems.append(
                f"index.faiss is a {type(faiss.downcast_index(index)).__name__}, gallery.json says {meta.get('index_type')!r}"
            )
        expected_metric = faiss.METRIC_INNER_PRODUCT if meta["metric"] == "ip" else faiss.METRIC_L2
        if index.metric_type != expected_metric:
            problems.append(f"index.faiss uses faiss metric {index.metric_type}, gallery.json says {meta['metric']!r}")
        if problems:
            raise GalleryFileError(f"gallery in {d} is inconsistent ({'; '.join(problems)}): restore it or rebuild the gallery")

        hp = meta.get("hnsw") or {}
        g = cls(
            dim,
            meta["metric"],
            int(meta.get("approximate_above", 200_000)),
            model_id,
            score_threshold=meta.get("score_threshold"),
            margin_threshold=float(meta.get("margin_threshold", DEFAULT_MARGIN_THRESHOLD)),
            ef_search=int(hp.get("ef_search", 64)),
            ef_construction=int(hp.get("ef_construction", 40)),
            approximate_index=meta.get("approximate_index", "auto"),
        )
        g.calibration = meta.get("calibration")
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
        return g


def evaluate_gallery(
    gallery_embeddings: np.ndarray,
    gallery_labels: Sequence[str],
    query_embeddings: np.ndarray,
    query_labels: Sequence[str],
    unknown_labels: Iterable[str] = (),
    *,
    thresholds_from: GalleryIndex | None = None,
    metric: str = "ip",
    score_threshold: float | None = None,
    margin_threshold: float = DEFAULT_MARGIN_THRESHOLD,
    k: int = 20,
) -> dict[str, Any]:
    """Build an exact gallery from ``gallery_embeddings`` and :meth:`GalleryIndex.evaluate` it.

    ``unknown_labels``: identities of queries that are not in the gallery (open-set queries).
    Thresholds are ``score_threshold`` / ``margin_threshold``, or those of ``thresholds_from``
    (a calibrated gallery; its metric is used too).  Returns ``rank1``, ``rank5``, ``rank10``
    (percent), ``map``, ``mrr``, ``open_set_auroc``, ``known_accuracy``, ``unknown_rejection``,
    ... (see :meth:`GalleryIndex.evaluate`).
    """
    g_emb = np.asarray(gallery_embeddings)
    if g_emb.ndim != 2:
        raise ValueError(f"gallery_embeddings must be a 2-D array (N, D), got shape {g_emb.shape}")
    if thresholds_from is not None:
        metric = thresholds_from.metric
        score_threshold = thresholds_from.score_threshold
        margin_threshold = thresholds_from.margin_threshold
    n = g_emb.shape[0]
    g = GalleryIndex(
        g_emb.shape[1],
        metric,
        approximate_above=max(n, 1),
        score_threshold=score_threshold,
        margin_threshold=margin_threshold,
    )
    g.add(g_emb, gallery_labels)
    return g.evaluate(query_embeddings, query_labels, unknown_labels, k=k)


if __name__ == "__main__":  # `python -m model_pkg.gallery build --embeddings DIR --out DIR` (vector_index.main)
    vi.main()
