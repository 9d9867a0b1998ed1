"""Gallery retrieval and open-set recognition: ranking a query against a gallery, and rejecting unknown dogs.

* ``retrieval_metrics``: each query is ranked against a gallery by similarity; recall@k, mAP and MRR.
* ``text_image_retrieval_metrics``: the same in both directions between captions and images.
* ``open_set_metrics``: how well a "known dog" score separates queries whose dog is in the gallery from
  queries whose dog is not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .inputs import as_scores, sklearn_metrics

__all__ = ["open_set_metrics", "retrieval_metrics", "text_image_retrieval_metrics"]


# --------------------------------------------------------------------------- #
# Retrieval / identification
# --------------------------------------------------------------------------- #
def retrieval_metrics(
    query_labels: Sequence[Any] | np.ndarray,
    gallery_labels: Sequence[Any] | np.ndarray,
    similarity: np.ndarray,
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Gallery retrieval metrics (identify a query dog among gallery photos).

    ``similarity[q, g]`` is the score of gallery item ``g`` for query ``q``
    (higher = more similar).  Each query's gallery is ranked by descending
    similarity; exact ties keep gallery order (stable sort), so results are
    deterministic.  Labels may be ints or strings (dog identities).

    Keys:

    * ``r{k}`` for each k in ``ks`` -- recall@k in **percent** (0-100): the share
      of queries whose top-k gallery items contain at least one item with the
      query's label (k larger than the gallery means "whole gallery").
    * ``map`` -- mean average precision in [0, 1]: per query, the mean of
      precision@rank over the ranks of all same-label gallery items, averaged
      over queries.
    * ``mrr`` -- mean reciprocal rank in [0, 1]: average of 1/(rank of the first
      same-label gallery item).
    * ``num_queries`` -- queries that count (have >= 1 match in the gallery).
    * ``num_queries_without_match`` -- queries whose label is absent from the
      gallery; they are excluded from every metric above.

    Raises ``ValueError`` on shape mismatch, NaN similarities, bad ``ks`` or when
    no query has a match in the gallery.
    """
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    sim = np.asarray(similarity, dtype=np.float64)
    if q.ndim != 1 or g.ndim != 1:
        raise ValueError(f"query_labels and gallery_labels must be 1-D, got shapes {q.shape} and {g.shape}")
    if q.size == 0 or g.size == 0:
        raise ValueError(f"need at least one query and one gallery item, got {q.size} and {g.size}")
    if sim.shape != (q.size, g.size):
        raise ValueError(f"similarity must have shape (num_queries, num_gallery) = ({q.size}, {g.size}), got {sim.shape}")
    if np.isnan(sim).any():
        raise ValueError(f"similarity contains {int(np.isnan(sim).sum())} NaN value(s)")
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}")

    matches = q[:, None] == g[None, :]  # (Q, G) bool
    has_match = matches.any(axis=1)
    n_without = int((~has_match).sum())
    if not has_match.any():
        raise ValueError(f"none of the {q.size} queries has a gallery item with the same label")
    order = np.argsort(-sim[has_match], axis=1, kind="stable")
    rel = np.take_along_axis(matches[has_match], order, axis=1)  # relevance in ranked order
    n_q, n_g = rel.shape

    first_hit = rel.argmax(axis=1)  # 0-based rank of the first correct item (exists)
    out: dict[str, Any] = {}
    for k in ks:
        out[f"r{k}"] = float(100.0 * np.mean(first_hit < k))
    hits_cum = np.cumsum(rel, axis=1)
    prec_at = hits_cum / np.arange(1, n_g + 1)[None, :]
    ap = (prec_at * rel).sum(axis=1) / rel.sum(axis=1)
    out["map"] = float(ap.mean())
    out["mrr"] = float(np.mean(1.0 / (first_hit + 1)))
    out["num_queries"] = int(n_q)
    out["num_queries_without_match"] = n_without
    return out


def text_image_retrieval_metrics(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    text_image_index: Sequence[int] | np.ndarray,
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Cross-modal retrieval (DESIGN.md's text-search protocol: every image against all captions).

    ``image_embeds`` (N_img, E) and ``text_embeds`` (N_txt, E) are compared by dot product (cosine for
    L2-normalised embeddings); ``text_image_index[t]`` is the row of caption ``t``'s image. Returns
    ``{"text_to_image": {...}, "image_to_text": {...}}`` with ``r{k}`` in percent and ``mrr`` in [0, 1]
    (from :func:`retrieval_metrics`): a caption's query succeeds when its own image is in the top k;
    an image's query when any of its captions is.
    """
    img = np.asarray(image_embeds, dtype=np.float32)
    txt = np.asarray(text_embeds, dtype=np.float32)
    owner = np.asarray(text_image_index, dtype=np.int64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_embeds (N, E) and text_embeds (M, E) must share E, got {img.shape} and {txt.shape}")
    if owner.shape != (txt.shape[0],):
        raise ValueError(f"text_image_index must hold one image row per caption ({txt.shape[0]}), got shape {owner.shape}")
    if owner.size and (owner.min() < 0 or owner.max() >= img.shape[0]):
        raise ValueError(f"text_image_index values must lie in [0, {img.shape[0]}), got {owner.min()}..{owner.max()}")
    sim = txt @ img.T  # (M, N)
    rows = np.arange(img.shape[0])
    keys = [f"r{k}" for k in ks] + ["mrr"]
    t2i = retrieval_metrics(owner, rows, sim, ks)
    i2t = retrieval_metrics(rows, owner, sim.T, ks)
    return {"text_to_image": {k: t2i[k] for k in keys}, "image_to_text": {k: i2t[k] for k in keys}}


# --------------------------------------------------------------------------- #
# Open set
# --------------------------------------------------------------------------- #
def open_set_metrics(
    known_scores: Sequence[float] | np.ndarray,
    unknown_scores: Sequence[float] | np.ndarray,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Open-set recognition: does the "known" score separate known from unknown dogs?

    ``known_scores`` are scores of queries whose dog *is* in the gallery,
    ``unknown_scores`` of queries whose dog is not; higher score = "more known"
    (e.g. the best gallery similarity).

    Keys:

    * ``open_set_auroc`` -- ROC AUC with known = positive class (1.0 = perfect
      separation, 0.5 = chance).
    * ``num_known``, ``num_unknown`` -- counts.
    * only when ``threshold`` is given: ``threshold``; ``known_acceptance`` --
      fraction of known queries with score >= threshold (accepted as known);
      ``unknown_rejection`` -- fraction of unknown queries with score < threshold
      (rejected as unknown).
    """
    k = as_scores(known_scores, "known_scores")
    u = as_scores(unknown_scores, "unknown_scores")
    y = np.concatenate([np.ones(k.size, dtype=np.int64), np.zeros(u.size, dtype=np.int64)])
    out: dict[str, Any] = {
        "open_set_auroc": float(sklearn_metrics().roc_auc_score(y, np.concatenate([k, u]))),
        "num_known": int(k.size),
        "num_unknown": int(u.size),
    }
    if threshold is not None:
        t = float(threshold)
        if math.isnan(t):
            raise ValueError("threshold is NaN")
        out["threshold"] = t
        out["known_acceptance"] = float(np.mean(k >= t))
        out["unknown_rejection"] = float(np.mean(u < t))
    return out
