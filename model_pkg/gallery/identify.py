"""The gallery's decision rule over a plain vector store (`index.VectorStore`): kNN voting weighted by 1/distance,
the unknown / reshoot rejection at (score, margin) thresholds, their calibration on known and unknown queries, and
the retrieval and open-set metrics.  Functions of a store and thresholds; :class:`~model_pkg.gallery.GalleryIndex`
holds the store and its thresholds and calls them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..metrics import choose_threshold, open_set_metrics, retrieval_metrics
from .common import (
    MAX_CANDIDATES,
    MAX_MARGIN_CANDIDATES,
    MIN_MARGIN_CANDIDATE,
    EmptyGalleryError,
    Prediction,
    check_k,
    check_strings,
)
from .index import VectorStore

__all__ = ["Thresholds", "evaluate_store", "fit_thresholds", "predictions", "tally", "vote", "weighted_threshold"]

# (score, margin) thresholds of a decision: each one value for every query or one per query; a score of None or NaN
# rejects nothing as unknown.
Thresholds = tuple[Any, Any]
# a vote: top score (Q,), margin (Q,), the best label of each query, each query's (label, share) best first
Vote = tuple[np.ndarray, np.ndarray, list[str], list[list[tuple[str, float]]]]


def _above(x: float) -> float:
    y = x + 1.0
    return float(y) if (y > x and math.isfinite(y)) else float(np.nextafter(x, np.inf))


def _midpoint(a: float, b: float) -> float:
    mid = a / 2.0 + b / 2.0
    return float(mid) if a < mid <= b else float(b)


def weighted_threshold(pos: np.ndarray, neg: np.ndarray, w_pos: float, w_neg: float) -> float | None:
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


def vote(store: VectorStore, vecs: np.ndarray, k: int) -> Vote:
    """Weighted kNN vote over the ``k`` nearest of prepared queries: (top_score (Q,), margin (Q,), best label per
    query, shares per query)."""
    return tally(store, *store._search_raw(vecs, k))


def tally(store: VectorStore, scores: np.ndarray, pos: np.ndarray) -> Vote:
    """The vote of :func:`vote` over already searched neighbours (`VectorStore._search_raw`'s scores and positions)."""
    weights = 1.0 / store._distances(scores)
    top = scores[:, 0].astype(np.float64)
    margin = np.empty(len(pos))
    best: list[str] = []
    shares_all: list[list[tuple[str, float]]] = []
    for i in range(len(pos)):
        acc: dict[str, float] = {}  # insertion order = rank of each class's best neighbour
        for p, w in zip(pos[i], weights[i]):
            lab = store._labels[p]
            acc[lab] = acc.get(lab, 0.0) + float(w)
        total = sum(acc.values())
        ranked = sorted(acc.items(), key=lambda kv: -kv[1])  # stable: ties -> nearer class first
        shares = [(lab, w / total) for lab, w in ranked]
        margin[i] = shares[0][1] - (shares[1][1] if len(shares) > 1 else 0.0)
        best.append(shares[0][0])
        shares_all.append(shares)
    return top, margin, best, shares_all


def reasons(top: np.ndarray, margin: np.ndarray, thresholds: Thresholds) -> list[str | None]:
    """ "unknown" below the score threshold, else "reshoot" below the margin threshold, else None. `thresholds`:
    (score, margin), each one value or one per query (a score of None or NaN: nothing is unknown)."""
    score, least_margin = thresholds
    unknown = top < np.asarray(np.nan if score is None else score, dtype=np.float64)  # NaN: never below
    reshoot = margin < np.asarray(least_margin, dtype=np.float64)
    return ["unknown" if u else ("reshoot" if r else None) for u, r in zip(unknown, reshoot)]


def predictions(
    top: np.ndarray, margin: np.ndarray, best: list[str], shares: list[list[tuple[str, float]]], thresholds: Thresholds
) -> list[Prediction]:
    """One :class:`Prediction` per query from the vote, rejected as "unknown" or "reshoot" by the thresholds."""
    out = []
    for i, reason in enumerate(reasons(top, margin, thresholds)):
        out.append(
            Prediction(
                label=best[i] if reason is None else None,
                confidence=float(shares[i][0][1]),
                top_score=float(top[i]),
                margin=float(margin[i]),
                accepted=reason is None,
                reason=reason,
                candidates=[(lab, float(w)) for lab, w in shares[i][:MAX_CANDIDATES]],
            )
        )
    return out


# -------------------------------------------------------------- calibration
def fit_thresholds(
    store: VectorStore, kq: np.ndarray, kl: Sequence[str], uq: np.ndarray, target: str, k: int, fit_margin: bool, margin: float
) -> dict[str, Any]:
    """The ``score_threshold`` and ``margin_threshold`` that serve ``store``'s votes best on validation queries, and
    the numbers at them (:meth:`GalleryIndex.calibrate <model_pkg.gallery.GalleryIndex.calibrate>`, which stores
    them), from known queries ``kq`` of labels ``kl`` and unknown ones ``uq``; ``fit_margin=False`` keeps ``margin``."""
    if target not in ("balanced", "accuracy"):
        raise ValueError(f"target must be 'balanced' or 'accuracy', got {target!r}")
    k = check_k(k)
    kq = store._prepare(kq, "known_queries")
    kl = check_strings(kl, kq.shape[0], "known_labels", "known_queries")
    uq = store._prepare(uq, "unknown_queries")
    if len(store) == 0:
        raise EmptyGalleryError("the gallery is empty: register animals with add(...) first")
    registered = set(store._labels)
    stray = sorted(set(kl) - registered)
    if stray:
        raise ValueError(
            f"known_labels {stray[:5]} are not registered in the gallery: pass those photos in "
            "unknown_queries, or add(...) the animals first"
        )
    top_k, margin_k, best_k, _ = vote(store, kq, k)
    top_u, margin_u, _, _ = vote(store, uq, k)
    correct = np.array([b == t for b, t in zip(best_k, kl)])
    n_k, n_u = len(kl), uq.shape[0]

    uniq = np.unique(np.concatenate([margin_k, margin_u]))
    mids = (uniq[:-1] + uniq[1:]) / 2.0
    mids = mids[mids > MIN_MARGIN_CANDIDATE]
    if mids.size > MAX_MARGIN_CANDIDATES:
        mids = np.unique(np.quantile(mids, np.linspace(0.0, 1.0, MAX_MARGIN_CANDIDATES)))
    margin_cands = np.concatenate([[MIN_MARGIN_CANDIDATE], mids]) if fit_margin else np.array([margin])

    # integer weights make the objective exact: balanced = (n_u*known_right + n_k*unknown_right) / (2 n_k n_u)
    w_k, w_u = (n_u, n_k) if target == "balanced" else (1, 1)
    best: tuple[int, float, float | None] | None = None
    for m in margin_cands:
        eligible = correct & (margin_k >= m)  # known queries that the score threshold can still get right
        blocked = margin_u < m  # unknown queries already rejected as "reshoot"
        pos, neg = top_k[eligible], top_u[~blocked]
        thr: float | None
        if target == "accuracy" and pos.size and neg.size:
            thr = choose_threshold(np.concatenate([np.ones(pos.size, int), np.zeros(neg.size, int)]), np.concatenate([pos, neg]))
        else:
            thr = weighted_threshold(pos, neg, w_k, w_u)
        known_right = int((pos >= thr).sum()) if thr is not None else int(pos.size)
        unknown_right = int(blocked.sum()) + (int((neg < thr).sum()) if thr is not None else 0)
        value = w_k * known_right + w_u * unknown_right
        if best is None or value > best[0]:
            best = (value, float(m), thr)
    assert best is not None
    _, m_best, s_best = best
    accepted_k = np.array([r is None for r in reasons(top_k, margin_k, (s_best, m_best))])
    rejected_u = np.array([r is not None for r in reasons(top_u, margin_u, (s_best, m_best))])
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
    return result


def evaluate_store(
    store: VectorStore,
    query_embeddings: np.ndarray,
    query_labels: Sequence[str],
    unknown_labels: Iterable[str],
    k: int,
    thresholds: Thresholds,
    gallery_thresholds: Thresholds,
) -> dict[str, Any]:
    """The numbers of :meth:`GalleryIndex.evaluate <model_pkg.gallery.GalleryIndex.evaluate>`: decided at
    ``thresholds``, reporting the gallery's own ``gallery_thresholds``."""
    k = check_k(k)
    q = store._prepare(query_embeddings, "query_embeddings")
    ql = check_strings(query_labels, q.shape[0], "query_labels", "query_embeddings")
    if len(store) == 0:
        raise EmptyGalleryError("the gallery is empty: register animals with add(...) first")
    unknown = set(unknown_labels)
    registered = set(store._labels)
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
    chunk = max(1, 4_000_000 // max(1, len(store)))
    sums = {f"r{kk}": 0.0 for kk in ks} | {"map": 0.0, "mrr": 0.0}
    gl = np.asarray(store._labels)
    for start in range(0, known_idx.size, chunk):
        rows = known_idx[start : start + chunk]
        r = retrieval_metrics([ql[i] for i in rows], gl, store._exact_similarity(q[rows]), ks=ks)
        for key in sums:
            sums[key] += r[key] * r["num_queries"]
    n_known = int(known_idx.size)

    top, margin, best, _ = vote(store, q, k)
    accepted = np.array([r is None for r in reasons(top, margin, thresholds)])
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
        "score_threshold": gallery_thresholds[0],
        "margin_threshold": gallery_thresholds[1],
        "k": k,
        "num_known": n_known,
        "num_unknown": int(is_unknown.sum()),
        "num_gallery": len(store),
        "num_identities": len(registered),
    }
    if is_unknown.any():
        out["unknown_rejection"] = float(np.mean(~accepted[is_unknown]))
        out["balanced_accuracy"] = (out["known_accuracy"] + out["unknown_rejection"]) / 2.0
        out["open_set_auroc"] = open_set_metrics(top[known], top[is_unknown])["open_set_auroc"]
    return out
