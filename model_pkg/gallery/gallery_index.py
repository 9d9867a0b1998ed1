"""The gallery: a plain vector store (`index.VectorStore`) and the decision rule over it (`identify`): kNN voting,
unknown / reshoot rejection at (score, margin) thresholds, their calibration.  The store keeps, searches and saves
the vectors; :class:`GalleryIndex` holds one with its thresholds and forwards the store's own API to it."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import Self

from ..vector_index import spec as index_spec
from .common import DEFAULT_MARGIN_THRESHOLD, Prediction, check_k
from .identify import Thresholds, evaluate_store, fit_thresholds, predictions, tally, vote
from .index import VectorStore
from .inputs import check_thresholds

__all__ = ["GalleryIndex"]


def _store_attribute(name: str, settable: bool = False) -> property:
    """A property of the gallery that is its store's (the store's docstring)."""
    doc = getattr(getattr(VectorStore, name, None), "__doc__", None)
    setter = (lambda self, value: setattr(self.store, name, value)) if settable else None
    return property(lambda self: getattr(self.store, name), setter, doc=doc)


def _store_method(name: str) -> Callable[..., Any]:
    """A method of the gallery that is its store's (the store's signature and docstring)."""
    method = getattr(VectorStore, name)

    @functools.wraps(method)
    def forward(self: GalleryIndex, *args: Any, **kwargs: Any) -> Any:
        return method(self.store, *args, **kwargs)

    return forward


class GalleryIndex:
    """Faiss gallery of labelled embeddings with kNN voting and unknown/reshoot rejection.

    Args:
        dim: embedding dimension.
        metric: ``"ip"`` (cosine similarity on L2-normalised vectors) or ``"l2"``.
        approximate_above: switch to the approximate index when the gallery holds more than this
            many vectors (default ``vector_index.IVF_MIN``, 100,000: up to there an exact search takes
            milliseconds; bench/README.md, "Scale").
        model_id: which embedder made the vectors (e.g. model folder + config hash); recorded
            in ``gallery.json`` so ``load(expected_model_id=...)`` can refuse a gallery made by
            another model.
        score_threshold: minimum ``top_score`` to accept (``None``: never reject as unknown).
        margin_threshold: minimum vote-share margin to accept (else "reshoot").
        ef_search: HNSW search breadth (higher = better recall, slower; default ``vector_index.HNSW_EF_SEARCH``,
            chosen at 1M vectors: bench/README.md, "Scale").
        ef_construction: HNSW build breadth (default ``vector_index.HNSW_EF_CONSTRUCTION``).
        approximate_index: ``"auto"`` (by size, :func:`model_pkg.vector_index.choose_spec`), ``"hnsw"``,
            ``"ivf_flat"`` or ``"ivf_pq"`` (IVF needs ``vector_index.IVF_MIN_TRAIN`` vectors; a smaller
            gallery uses HNSW).
    """

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
        store = VectorStore(
            dim,
            metric,
            approximate_above,
            model_id,
            ef_search=ef_search,
            ef_construction=ef_construction,
            approximate_index=approximate_index,
        )
        self._init(store, score_threshold, margin_threshold)

    def _init(self, store: VectorStore, score_threshold: float | None, margin_threshold: float) -> None:
        check_thresholds(score_threshold, margin_threshold)
        self.store = store
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.margin_threshold = float(margin_threshold)
        self.calibration: dict[str, Any] | None = None

    @property
    def thresholds(self) -> Thresholds:
        """``(score_threshold, margin_threshold)``: the gallery's own decision rule."""
        return self.score_threshold, self.margin_threshold

    def _or_own(self, thresholds: Thresholds | None) -> Thresholds:
        return self.thresholds if thresholds is None else thresholds

    # ------------------------------------------------------------ the store's API
    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return self.store.repr_as("GalleryIndex")

    dim = _store_attribute("dim")
    metric = _store_attribute("metric")
    model_id = _store_attribute("model_id")
    approximate_above = _store_attribute("approximate_above")
    approximate_index = _store_attribute("approximate_index")
    ef_construction = _store_attribute("ef_construction")
    labels = _store_attribute("labels")
    identities = _store_attribute("identities")
    ids = _store_attribute("ids")
    metadata = _store_attribute("metadata")
    vectors = _store_attribute("vectors")
    is_approximate = _store_attribute("is_approximate")
    approximate_spec = _store_attribute("approximate_spec")
    ef_search = _store_attribute("ef_search", settable=True)
    add = _store_method("add")
    remove = _store_method("remove")
    build_approximate = _store_method("build_approximate")
    search = _store_method("search")

    # --------------------------------------------------------------- deciding
    def classify(self, queries: np.ndarray, k: int = 20, thresholds: Thresholds | None = None) -> list[Prediction]:
        """Identify each query by 1/d-weighted voting over its ``k`` nearest gallery photos.

        See the module docstring for the voting and rejection rules; ``thresholds`` (score, margin), one value or
        one per query, replace the gallery's own (e.g. the thresholds of each query's kind of photo).
        """
        voted = vote(self.store, self.store._prepare(queries, "queries"), k)
        return predictions(*voted, self._or_own(thresholds))

    def classify_and_search(
        self, queries: np.ndarray, k: int = 20, nearest: int = 50, thresholds: Thresholds | None = None
    ) -> tuple[list[Prediction], np.ndarray, list[list[str]], list[list[str]]]:
        """``classify(queries, k)`` and ``search(queries, max(k, nearest))`` from one search of the index.

        The vote is over the first ``k`` of the ``max(k, nearest)`` nearest photos: on the exact index the ``k``
        nearest that ``classify`` votes over; an approximate index (over ``approximate_above`` photos) searched
        wider may find nearer ones than its ``k``-search. Returns the predictions and ``search``'s
        ``(scores, labels, ids)``.
        """
        k = check_k(k)
        store = self.store
        scores, pos = store._search_raw(store._prepare(queries, "queries"), max(k, check_k(nearest)))
        decided = predictions(*tally(store, scores[:, :k], pos[:, :k]), self._or_own(thresholds))
        labels = [[store._labels[p] for p in row] for row in pos]
        ids = [[store._ids[p] for p in row] for row in pos]
        return decided, scores, labels, ids

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
        result = fit_thresholds(
            self.store, known_queries, known_labels, unknown_queries, target, k, fit_margin, self.margin_threshold
        )
        self.score_threshold = result["score_threshold"]
        self.margin_threshold = result["margin_threshold"]
        self.calibration = dict(result)
        return result

    def evaluate(
        self,
        query_embeddings: np.ndarray,
        query_labels: Sequence[str],
        unknown_labels: Iterable[str] = (),
        k: int = 20,
        thresholds: Thresholds | None = None,
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
          ``score_threshold`` / ``margin_threshold``, reported too, or at ``thresholds`` as in ``classify``).
        * ``open_set_auroc`` -- known vs unknown queries by ``top_score``
          (:func:`model_pkg.metrics.open_set_metrics`).
        * ``unknown_rejection``, ``balanced_accuracy``, ``open_set_auroc`` are ``None`` without
          unknown queries.  Plus counts and ``k``.
        """
        return evaluate_store(
            self.store,
            query_embeddings,
            query_labels,
            unknown_labels,
            k,
            self._or_own(thresholds),
            self.thresholds,
        )

    # ------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the gallery to ``directory`` atomically; returns the folder path.

        The store's files (:meth:`VectorStore.save <model_pkg.gallery.index.VectorStore.save>`: ``index.faiss``,
        ``vectors.npy``, ``gallery.json`` with the sha256 of both), the thresholds and calibration in
        ``gallery.json``.  Everything is written and fsynced in a temporary sibling folder, then swapped with
        ``directory`` in one atomic step (Linux ``renameat2``; elsewhere two renames, rolled back on error and
        recovered by :meth:`load` after a hard crash).  ``directory`` must be empty, missing or hold only a gallery:
        other files in it are refused, since the folder is replaced whole.
        """
        policy = {
            "score_threshold": self.score_threshold,
            "margin_threshold": self.margin_threshold,
            "calibration": self.calibration,
        }
        return self.store.save(directory, policy)

    @classmethod
    def load(cls, directory: str | os.PathLike, expected_dim: int | None = None, expected_model_id: str | None = None) -> Self:
        """Load a gallery written by :meth:`save` (its store verified as :meth:`VectorStore.load
        <model_pkg.gallery.index.VectorStore.load>` does, with the same errors), with its thresholds and calibration."""
        store, meta = VectorStore.load_with_meta(directory, expected_dim, expected_model_id)
        gallery = cls.__new__(cls)
        margin = float(meta.get("margin_threshold", DEFAULT_MARGIN_THRESHOLD))
        gallery._init(store, meta.get("score_threshold"), margin)
        gallery.calibration = meta.get("calibration")
        return gallery
