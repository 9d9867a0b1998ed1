"""GalleryIndex: exact/HNSW/IVF search, voting, rejection, calibration, input errors, evaluate_gallery.

Synthetic clustered vectors only (tests/gallery_helpers.py), single faiss thread: fast on a busy CPU.
Saving and loading: tests/gallery/test_gallery_files.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_pkg import vector_index
from model_pkg.gallery import (
    EmptyGalleryError,
    GalleryIndex,
    GalleryMismatchError,
    Prediction,
    evaluate_gallery,
)
from model_pkg.gallery.identify import weighted_threshold
from model_pkg.metrics import choose_threshold
from model_pkg.vector_index import spec as vector_index_spec
from tests.gallery_helpers import DIM, build, make_centres, names, noisy, one_faiss_thread, registered_world, unit

_one_faiss_thread = pytest.fixture(autouse=True, scope="module")(one_faiss_thread)
world = pytest.fixture(scope="module", name="world")(registered_world)


# --------------------------------------------------------------------------- #
# search
# --------------------------------------------------------------------------- #
def test_search_matches_brute_force_ip(world):
    _, gal, glab = world
    g = build(world)
    assert len(g) == 150 and g.labels == glab and len(g.identities) == 30
    q = np.random.default_rng(5).standard_normal((7, DIM)).astype(np.float32) * 3.0  # not normalised
    q_before = q.copy()
    scores, labels, ids = g.search(q, k=10)
    np.testing.assert_array_equal(q, q_before)  # input untouched
    sims = unit(q) @ gal.T
    order = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(sims, order, 1), atol=1e-5)
    assert ids == [[str(j) for j in row] for row in order]
    assert labels == [[glab[j] for j in row] for row in order]
    assert scores.shape == (7, 10) and scores.dtype == np.float32


def test_search_matches_brute_force_l2_and_k_clamped(world):
    _, gal, glab = world
    g = GalleryIndex(DIM, metric="l2")
    g.add(gal[:12], glab[:12])
    q = gal[[0, 7]] + 0.01
    scores, labels, _ = g.search(q, k=50)  # k larger than the gallery: all 12, best first
    d = np.linalg.norm(q[:, None, :] - gal[None, :12, :], axis=2)
    np.testing.assert_allclose(scores, -np.sort(d, axis=1), atol=1e-5)
    assert scores.shape == (2, 12)


# --------------------------------------------------------------------------- #
# classify / voting / rejection
# --------------------------------------------------------------------------- #
def test_classify_votes_right_label(world):
    centres, _, _ = world
    g = build(world)
    q, qidx = noisy(centres[:30], 2, seed=9)
    preds = g.classify(q, k=10)
    assert all(isinstance(p, Prediction) for p in preds)
    assert [p.label for p in preds] == names(qidx)
    for p in preds:
        assert p.accepted and p.reason is None and 0.5 < p.confidence <= 1.0
        assert p.candidates[0] == (p.label, pytest.approx(p.confidence))
        assert sum(w for _, w in p.candidates) <= 1.0 + 1e-9
        assert p.margin == pytest.approx(p.confidence - (p.candidates[1][1] if len(p.candidates) > 1 else 0.0))
    json.dumps(preds[0].to_dict())


def test_classify_and_search_is_classify_plus_search(world):
    # one search (issue 34): the vote equals classify's, the neighbours equal search's, with thresholds set
    centres, _, _ = world
    g = build(world)
    g.score_threshold, g.margin_threshold = 0.9, 0.3  # some accepted, some unknown, some reshoot
    q, _ = noisy(centres[:30], 2, seed=11)
    for k, nearest in ((10, 50), (20, 5), (200, 50)):  # nearest below k, and both above the gallery's 150
        preds, scores, labels, ids = g.classify_and_search(q, k=k, nearest=nearest)
        assert [p.to_dict() for p in preds] == [p.to_dict() for p in g.classify(q, k=k)]
        s2, l2, i2 = g.search(q, k=max(k, nearest))
        np.testing.assert_array_equal(scores, s2)
        assert (labels, ids) == (l2, i2)


def test_vote_weights_are_inverse_distance():
    # one very close "a" photo outweighs two farther "b" photos
    e = np.eye(4, dtype=np.float32)
    g = GalleryIndex(4)
    a = unit(np.array([1.0, 0.05, 0, 0]))
    b1, b2 = unit(np.array([1.0, 0.6, 0, 0])), unit(np.array([1.0, 0, 0.6, 0]))
    g.add(np.stack([a, b1, b2]), ["a", "b", "b"])
    (p,) = g.classify(e[0], k=3)
    s = np.array([a[0], b1[0], b2[0]], dtype=np.float64)
    w = 1.0 / np.maximum(1.0 - s, 1e-6)
    assert p.label == "a"
    assert p.confidence == pytest.approx(w[0] / w.sum(), rel=1e-4)
    assert p.top_score == pytest.approx(a[0], abs=1e-6)


def test_reshoot_when_two_classes_tie():
    a, b = np.eye(8, dtype=np.float32)[:2]
    g = GalleryIndex(8)
    g.add(np.stack([a, b]), ["rex", "max"])
    (p,) = g.classify(a + b, k=2)  # exactly half-way between the two dogs
    assert p.reason == "reshoot" and not p.accepted and p.label is None
    assert p.margin == pytest.approx(0.0, abs=1e-5)
    assert {lab for lab, _ in p.candidates} == {"rex", "max"}


def test_unknown_rejected_after_calibrate(world):
    centres, _, _ = world
    g = build(world)
    # validation: other photos of registered dogs + photos of 8 unregistered dogs
    kq, kidx = noisy(centres[:30], 2, seed=11)
    uq, _ = noisy(centres[30:38], 3, seed=12)
    before = g.classify(uq)
    assert not any(p.reason == "unknown" for p in before)  # uncalibrated: no unknown rejection
    res = g.calibrate(kq, names(kidx), uq)
    for key in (
        "score_threshold",
        "margin_threshold",
        "known_accuracy",
        "unknown_rejection",
        "balanced_accuracy",
        "open_set_auroc",
        "known_misidentified",
        "num_known",
        "num_unknown",
    ):
        assert key in res
    assert g.score_threshold == res["score_threshold"] and g.margin_threshold == res["margin_threshold"]
    assert res["margin_threshold"] > 0 and res["balanced_accuracy"] > 0.95
    json.dumps(res)
    # test on fresh photos, including dogs never seen in calibration
    tq, tidx = noisy(centres[:30], 1, seed=21)
    known_preds = g.classify(tq)
    assert np.mean([p.accepted and p.label == lab for p, lab in zip(known_preds, names(tidx))]) >= 0.9
    unk_q, _ = noisy(centres[38:], 3, seed=22)
    unk_preds = g.classify(unk_q)
    assert np.mean([p.reason == "unknown" for p in unk_preds]) >= 0.9
    assert all(p.label is None for p in unk_preds if not p.accepted)


def test_calibrate_accuracy_target_and_validation(world):
    centres, _, _ = world
    g = build(world)
    kq, kidx = noisy(centres[:30], 1, seed=13)
    uq, _ = noisy(centres[30:], 1, seed=14)
    res = g.calibrate(kq, names(kidx), uq, target="accuracy")
    assert res["target"] == "accuracy" and res["accuracy"] > 0.9
    g.margin_threshold = 0.2
    assert g.calibrate(kq, names(kidx), uq, fit_margin=False)["margin_threshold"] == 0.2
    with pytest.raises(ValueError, match="not registered"):
        g.calibrate(kq[:1], ["dog040"], uq)
    with pytest.raises(ValueError, match="target"):
        g.calibrate(kq, names(kidx), uq, target="f1")


def test_weighted_threshold_matches_choose_threshold():
    rng = np.random.default_rng(3)
    for _ in range(20):
        pos = rng.integers(0, 12, size=rng.integers(1, 15)).astype(float)
        neg = rng.integers(0, 12, size=rng.integers(1, 15)).astype(float)
        labels = np.r_[np.ones(pos.size, int), np.zeros(neg.size, int)]
        assert weighted_threshold(pos, neg, 1, 1) == choose_threshold(labels, np.r_[pos, neg])


# --------------------------------------------------------------------------- #
# HNSW
# --------------------------------------------------------------------------- #
def test_hnsw_recall_close_to_exact():
    centres = make_centres(1000, seed=30)
    x, xidx = noisy(centres, 5, noise=0.5, seed=31)  # 5000 vectors
    g = GalleryIndex(DIM, approximate_above=1000)
    g.add(x, names(xidx))
    assert not g.is_approximate
    q, _ = noisy(centres[:200], 1, noise=0.5, seed=32)
    _, _, ids_hnsw = g.search(q, k=10)  # crossing approximate_above builds HNSW here
    assert g.is_approximate
    _, _, ids_exact = g.search(q, k=10, exact=True)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_hnsw, ids_exact)])
    assert recall > 0.95


def test_hnsw_switch_threshold_add_remove(world):
    _, gal, glab = world
    g = GalleryIndex(DIM, approximate_above=100)
    g.add(gal[:100], glab[:100])
    g.search(gal[:1])
    assert not g.is_approximate
    g.add(gal[100:], glab[100:])
    s_hnsw, lab_hnsw, _ = g.search(gal[:3], k=5)
    assert g.is_approximate
    assert lab_hnsw[0][0] == glab[0]
    n_removed = g.remove(glab[0])
    assert n_removed == 5 and len(g) == 145 and glab[0] not in g.labels
    _, labs, _ = g.search(gal[:3], k=20)  # HNSW rebuilt from the kept exact vectors
    assert g.is_approximate and all(glab[0] not in row for row in labs)
    with pytest.raises(ValueError, match="no vectors with label"):
        g.remove("no-such-dog")


def test_build_approximate_explicit(world):
    g = build(world)
    exact = g.search(world[1][:4], k=5)
    g.build_approximate(ef_search=128)
    assert g.is_approximate and g.ef_search == 128
    approx = g.search(world[1][:4], k=5)
    assert approx[2] == exact[2]


# --------------------------------------------------------------------------- #
# IVF (large galleries): chosen by size, exact re-ranking, saved and loaded
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def ivf_world():
    centres = make_centres(2400, seed=40)
    x, xidx = noisy(centres, 5, noise=0.45, seed=41)  # 12,000 vectors: enough to train IVF cells and PQ codebooks
    q, _ = noisy(centres[:150], 1, noise=0.45, seed=42)
    return x, names(xidx), q


def test_auto_index_choice_follows_size(monkeypatch, ivf_world):
    x, labels, q = ivf_world
    g = GalleryIndex(DIM, approximate_above=1000)
    g.add(x, labels)
    g.search(q[:1])
    assert g.approximate_spec.kind == "hnsw" and g.approximate_spec.storage == "fp16"  # below IVF_MIN
    scores, _, ids = g.search(q, k=10)
    exact_scores, _, ids_exact = g.search(q, k=10, exact=True)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ids_exact)]) > 0.95
    # float16 inside the graph, but the candidates are re-scored against the float32 vectors: exact scores
    same = [i for i in range(len(q)) if ids[i][0] == ids_exact[i][0]]
    assert len(same) > 0.9 * len(q)
    np.testing.assert_allclose(scores[same, 0], exact_scores[same, 0], rtol=1e-6)
    monkeypatch.setattr(vector_index_spec, "EXACT_MAX", 1_000)  # the 1M-scale thresholds, scaled down
    monkeypatch.setattr(vector_index_spec, "IVF_MIN", 10_000)
    g.build_approximate()
    spec = g.approximate_spec
    assert spec.fast_scan and spec.rerank == vector_index.GALLERY_RERANK and "index=ivf_pq" in repr(g)


@pytest.mark.parametrize("kind", ["ivf_pq", "ivf_flat"])
def test_ivf_gallery_recall_and_round_trip(ivf_world, tmp_path, kind):
    x, labels, q = ivf_world
    g = GalleryIndex(DIM, approximate_above=1000, approximate_index=kind, score_threshold=0.3)
    g.add(x, labels)
    _, _, ids = g.search(q, k=10)
    assert g.is_approximate and g.approximate_spec.kind == kind
    _, _, ids_exact = g.search(q, k=10, exact=True)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ids_exact)])
    assert recall > 0.85  # 32 of ~190 cells scanned, on hard random 32-d clusters
    if kind == "ivf_pq":  # the 4-byte codes alone lose neighbours: re-scoring the candidates exactly wins them back
        g.approximate_spec.rerank = 1
        codes_only = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(g.search(q, k=10)[2], ids_exact)])
        assert codes_only < recall - 0.1
        g.approximate_spec.rerank = vector_index.GALLERY_RERANK
    g.save(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert meta["index_type"] == kind and meta["version"] == 2 and meta["vector_index"]["kind"] == kind
    h = GalleryIndex.load(tmp_path / "g")
    assert h.approximate_spec == g.approximate_spec
    a, b = g.search(q, k=10), h.search(q, k=10)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
    assert [p.to_dict() for p in g.classify(q[:5])] == [p.to_dict() for p in h.classify(q[:5])]
    trained = h.store._approx
    h.remove(labels[0])  # the IVF index keeps its cells (no retraining) and takes the remaining vectors again
    assert h.store._approx is trained and h.store._approx.ntotal == len(h) and h.is_approximate
    assert all(labels[0] not in row for row in h.search(q[:3], k=10)[1]) and h.approximate_spec.kind == kind
    assert h.search(q[3:4], k=1)[2] == h.search(q[3:4], k=1, exact=True)[2]  # positions still match the rows


def test_small_gallery_asking_for_ivf_uses_hnsw(world):
    g = build(world, approximate_index="ivf_pq")
    g.build_approximate()
    assert g.approximate_spec.kind == "hnsw"  # 150 vectors cannot train IVF cells and PQ codebooks
    with pytest.raises(ValueError, match="approximate_index"):
        GalleryIndex(DIM, approximate_index="lsh")


def test_gallery_saved_before_ivf_support_still_loads(world, tmp_path):
    g = build(world, ef_search=40)
    g.build_approximate()
    g.save(tmp_path / "g")
    meta_file = tmp_path / "g" / "gallery.json"
    meta = json.loads(meta_file.read_text())
    assert meta["version"] == 1 and meta["index_type"] == "hnsw"  # HNSW and flat galleries keep format 1
    for key in ("approximate_index", "vector_index"):  # what a gallery written by the older code lacks
        del meta[key]
    meta_file.write_text(json.dumps(meta))
    h = GalleryIndex.load(tmp_path / "g")
    assert h.is_approximate and h.approximate_spec.kind == "hnsw" and h.ef_search == 40
    assert h.search(world[1][:3], k=5)[2] == g.search(world[1][:3], k=5)[2]


# --------------------------------------------------------------------------- #
# input errors
# --------------------------------------------------------------------------- #
def test_dim_mismatch_on_add_and_search(world):
    g = build(world)
    with pytest.raises(GalleryMismatchError, match=r"dimension 16 .* 32-dimensional .*another embedder.*Rebuild"):
        g.search(np.ones((2, 16), np.float32))
    with pytest.raises(GalleryMismatchError, match="dimension 64"):
        g.add(np.ones((1, 64), np.float32), ["x"])
    assert len(g) == 150


def test_empty_gallery_search():
    g = GalleryIndex(DIM)
    for call in (lambda: g.search(np.ones(DIM)), lambda: g.classify(np.ones(DIM))):
        with pytest.raises(EmptyGalleryError, match=r"the gallery is empty: register animals with add\(\.\.\.\) first"):
            call()
    with pytest.raises(RuntimeError):
        g.search(np.ones(DIM))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_vector_refused(world, bad):
    g = build(world)
    x = np.ones((3, DIM), np.float32)
    x[1, 4] = bad
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] contain NaN or infinite"):
        g.add(x, ["a", "b", "c"])
    assert len(g) == 150
    with pytest.raises(ValueError, match="NaN or infinite"):
        g.search(x)


def test_zero_vector_refused(world):
    g = build(world)
    x = np.ones((2, DIM), np.float32)
    x[0] = 0
    with pytest.raises(ValueError, match=r"row\(s\) \[0\] are zero vectors"):
        g.add(x, ["a", "b"])
    with pytest.raises(ValueError, match="zero vectors"):
        g.classify(x)
    assert len(g) == 150


def test_labels_ids_k_errors(world):
    g = build(world)
    x = np.ones((2, DIM), np.float32)
    with pytest.raises(ValueError, match="labels has 1 entries but embeddings has 2 rows"):
        g.add(x, ["a"])
    with pytest.raises(ValueError, match="already in the gallery"):
        g.add(x, ["a", "b"], ids=["0", "new"])
    with pytest.raises(ValueError, match="repeated"):
        g.add(x, ["a", "b"], ids=["z", "z"])
    with pytest.raises(ValueError, match="non-empty strings"):
        g.add(x, ["a", 3])
    with pytest.raises(ValueError, match="k must be >= 1"):
        g.search(x, k=0)
    assert len(g) == 150


# --------------------------------------------------------------------------- #
# evaluation helper
# --------------------------------------------------------------------------- #
def test_evaluate_gallery(world):
    centres, gal, glab = world
    q, qidx = noisy(centres, 2, seed=40)  # 30 registered + 15 unknown identities
    unknown = set(names(range(30, 45)))
    cal = build(world)
    cq, cidx = noisy(centres, 1, seed=41)
    cal.calibrate(cq[:30], names(cidx[:30]), cq[30:])
    res = evaluate_gallery(gal, glab, q, names(qidx), unknown, thresholds_from=cal)
    assert res["rank1"] == pytest.approx(100.0) and res["rank5"] == pytest.approx(100.0)
    assert 0.9 < res["map"] <= 1.0
    assert res["open_set_auroc"] > 0.95
    assert res["known_accuracy"] > 0.9 and res["unknown_rejection"] > 0.9
    assert res["num_known"] == 60 and res["num_unknown"] == 30
    assert res["score_threshold"] == cal.score_threshold
    json.dumps(res)
    no_unknown = evaluate_gallery(gal, glab, q[:60], names(qidx[:60]))
    assert no_unknown["open_set_auroc"] is None and no_unknown["known_accuracy"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="registered in the gallery"):
        evaluate_gallery(gal, glab, q, names(qidx), {"dog000"})
    with pytest.raises(ValueError, match="neither registered"):
        evaluate_gallery(gal, glab, q, names(qidx), set())
