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
  (:func:`model_pkg.vector_index.choose_spec`, numbers in bench/README.md "Scale"):
  fast-scan IVF-PQ (4-bit codes, about ``2 sqrt(n)`` cells of which 3/32 are scanned); ``"hnsw"`` (M=32,
  float16 vectors inside the graph, ``ef_search`` configurable) when asked for; either way the candidates are
  re-scored exactly against the kept vectors, so every score is exact.
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

The parts: `common` (constants, errors, `Prediction`), `inputs` (checks of settings, vectors, ids and
metadata), `index` (`VectorStore`, the plain store: the vectors and faiss indexes, save / load), `storage` (files,
checksums, atomic swaps), `identify` (voting, rejection, calibration, metrics: functions of a store and thresholds);
`gallery_index`'s :class:`GalleryIndex` holds a store and its thresholds and decides with `identify`. `python -m model_pkg.gallery build`
builds a vector index from sharded embeddings (`model_pkg.vector_index`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..vector_index.spec import HNSW_M  # the one HNSW degree, for galleries and `gallery build`
from .common import (
    DEFAULT_MARGIN_THRESHOLD,
    GALLERY_FILES,
    INDEX_FILE,
    META_FILE,
    VECTORS_FILE,
    EmptyGalleryError,
    GalleryError,
    GalleryFileError,
    GalleryMismatchError,
    Prediction,
)
from .gallery_index import GalleryIndex
from .index import VectorStore

__all__ = [
    "GALLERY_FILES",
    "HNSW_M",
    "INDEX_FILE",
    "META_FILE",
    "VECTORS_FILE",
    "EmptyGalleryError",
    "GalleryError",
    "GalleryFileError",
    "GalleryIndex",
    "GalleryMismatchError",
    "Prediction",
    "VectorStore",
    "evaluate_gallery",
]


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
