import csv
import json
import math
import os

import numpy as np
import pytest

from model_pkg import metrics as M


# --------------------------------------------------------------------------- #
# naive reference implementations (loops, no sklearn)
# --------------------------------------------------------------------------- #
def naive_accuracy(labels, scores, t):
    return sum(int((s >= t) == bool(y)) for y, s in zip(labels, scores)) / len(labels)


def naive_prf(labels, scores, t):
    tp = sum(1 for y, s in zip(labels, scores) if s >= t and y == 1)
    fp = sum(1 for y, s in zip(labels, scores) if s >= t and y == 0)
    fn = sum(1 for y, s in zip(labels, scores) if s < t and y == 1)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def naive_auc(pos, neg):
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def naive_ap(labels, scores):
    # distinct scores, descending; ties handled as one step (sklearn convention)
    n_pos = sum(labels)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for y, s in zip(labels, scores) if s >= t and y == 1)
        k = sum(1 for s in scores if s >= t)
        recall = tp / n_pos
        ap += (recall - prev_recall) * (tp / k)
        prev_recall = recall
    return ap


def naive_best_threshold(labels, scores):
    u = sorted(set(scores))
    cands = [u[0]] + [(a + b) / 2 for a, b in zip(u, u[1:])] + [u[-1] + 1.0]
    accs = [naive_accuracy(labels, scores, c) for c in cands]
    best = max(accs)
    return min(c for c, a in zip(cands, accs) if a == best), best


def naive_retrieval(ql, gl, sim, ks):
    r = {k: 0 for k in ks}
    aps, rrs, n, n_without = [], [], 0, 0
    for i, q in enumerate(ql):
        if q not in list(gl):
            n_without += 1
            continue
        n += 1
        order = sorted(range(len(gl)), key=lambda j: -sim[i][j])
        ranked = [gl[j] == q for j in order]
        for k in ks:
            r[k] += any(ranked[:k])
        hits, precs = 0, []
        for rank, rel in enumerate(ranked, start=1):
            if rel:
                hits += 1
                precs.append(hits / rank)
        aps.append(sum(precs) / len(precs))
        rrs.append(1.0 / (ranked.index(True) + 1))
    out = {f"r{k}": 100.0 * r[k] / n for k in ks}
    out.update(map=sum(aps) / n, mrr=sum(rrs) / n, num_queries=n, num_queries_without_match=n_without)
    return out


# --------------------------------------------------------------------------- #
# choose_threshold
# --------------------------------------------------------------------------- #
def test_choose_threshold_hand_example_tie_goes_to_smallest():
    # sorted: 0.1(neg) 0.35(pos) 0.4(neg) 0.8(pos); midpoints 0.225 and 0.6 both give 3/4
    t = M.choose_threshold([0, 1, 0, 1], [0.1, 0.8, 0.4, 0.35])
    assert t == pytest.approx(0.225)
    assert isinstance(t, float)


def test_choose_threshold_extremes():
    # everything positive is best -> the minimum score itself (score >= t)
    assert M.choose_threshold([1, 1, 0], [0.1, 0.2, 0.3]) == pytest.approx(0.1)
    # everything negative is best -> strictly above the max score
    t = M.choose_threshold([1, 0, 0], [0.1, 0.5, 0.9])
    assert t == pytest.approx(1.9)
    assert naive_accuracy([1, 0, 0], [0.1, 0.5, 0.9], t) == pytest.approx(2 / 3)
    # perfectly separable
    assert M.choose_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == pytest.approx(0.45)


def test_choose_threshold_any_score_range_is_affine_equivariant():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = rng.normal(size=60) + y
    t = M.choose_threshold(y, s)
    t2 = M.choose_threshold(y, s * 1000.0 - 5000.0)
    assert t2 == pytest.approx(t * 1000.0 - 5000.0)
    assert naive_accuracy(y, s * 1000.0 - 5000.0, t2) == naive_accuracy(y, s, t)
    # cosine-like range [-1, 1]
    t3 = M.choose_threshold(y, np.tanh(s))
    assert -1.0 <= t3 <= 2.0


@pytest.mark.parametrize("seed", range(8))
def test_choose_threshold_matches_bruteforce(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    # integer scores force many duplicated values
    s = rng.integers(-3, 4, n).astype(float) if seed % 2 else rng.random(n)
    t = M.choose_threshold(y, s)
    ref_t, ref_acc = naive_best_threshold(list(y), list(s))
    assert naive_accuracy(y, s, t) == pytest.approx(ref_acc)
    assert t == pytest.approx(ref_t)


def test_choose_threshold_errors():
    with pytest.raises(ValueError, match="lengths"):
        M.choose_threshold([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.choose_threshold([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="only one class"):
        M.choose_threshold([1, 1], [0.1, 0.2])


# --------------------------------------------------------------------------- #
# verification_metrics
# --------------------------------------------------------------------------- #
def test_verification_metrics_hand_example_given_threshold():
    labels, scores = [0, 1, 0, 1], [0.1, 0.8, 0.4, 0.35]
    m = M.verification_metrics(labels, scores, threshold=0.5)
    assert m["threshold_source"] == "given"
    assert m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered correctly
    assert m["pr_auc"] == pytest.approx(5 / 6)  # ranks 1 and 3 relevant: (1 + 2/3) / 2
    assert m["best_accuracy"] == pytest.approx(0.75)
    assert m["num_pairs"] == 4 and m["num_positive"] == 2
    # JSON-serialisable, plain python types
    json.dumps(m)
    for k, v in m.items():
        assert type(v) in (float, int, str), (k, type(v))


def test_verification_metrics_oracle_threshold():
    labels, scores = [0, 0, 1, 1, 1], [0.2, 0.6, 0.5, 0.7, 0.9]
    m = M.verification_metrics(labels, scores)
    assert m["threshold_source"] == "oracle"
    assert m["threshold"] == pytest.approx(M.choose_threshold(labels, scores))
    assert m["accuracy"] == pytest.approx(m["best_accuracy"]) == pytest.approx(0.8)
    # a worse given threshold lowers accuracy but not best_accuracy
    m2 = M.verification_metrics(labels, scores, threshold=0.95)
    assert m2["accuracy"] == pytest.approx(0.4)
    assert m2["precision"] == 0.0 and m2["recall"] == 0.0 and m2["f1"] == 0.0
    assert m2["best_accuracy"] == pytest.approx(0.8)


@pytest.mark.parametrize("seed", range(5))
def test_verification_metrics_vs_naive(seed):
    rng = np.random.default_rng(100 + seed)
    n = 50
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=n) + 0.8 * y, 1)  # rounding -> ties
    t = float(rng.normal())
    m = M.verification_metrics(y, s, threshold=t)
    p, r, f = naive_prf(y, s, t)
    assert m["accuracy"] == pytest.approx(naive_accuracy(y, s, t))
    assert m["precision"] == pytest.approx(p)
    assert m["recall"] == pytest.approx(r)
    assert m["f1"] == pytest.approx(f)
    assert m["roc_auc"] == pytest.approx(naive_auc(s[y == 1], s[y == 0]))
    assert m["pr_auc"] == pytest.approx(naive_ap(list(y), list(s)))
    assert m["best_accuracy"] == pytest.approx(naive_best_threshold(list(y), list(s))[1])
    assert m["num_positive"] == int(y.sum())


def test_verification_metrics_errors():
    with pytest.raises(ValueError, match=r"only one class.*all 3 are 0"):
        M.verification_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"only one class.*all 2 are 1"):
        M.verification_metrics([True, True], [0.1, 0.2])
    with pytest.raises(ValueError, match="different lengths"):
        M.verification_metrics([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        M.verification_metrics([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="0/1"):
        M.verification_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        M.verification_metrics([], [])


# --------------------------------------------------------------------------- #
# roc_pr_curves
# --------------------------------------------------------------------------- #
def test_roc_pr_curves_finite_and_consistent():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    s = rng.normal(size=40) + y
    c = M.roc_pr_curves(y, s)
    json.loads(json.dumps(c, allow_nan=False))  # no inf / nan
    assert set(c) == {"fpr", "tpr", "roc_thresholds", "precision", "recall", "pr_thresholds"}
    assert len(c["fpr"]) == len(c["tpr"]) == len(c["roc_thresholds"])
    assert len(c["precision"]) == len(c["recall"]) == len(c["pr_thresholds"]) + 1
    assert c["roc_thresholds"][0] == pytest.approx(s.max() + 1.0)
    assert (c["fpr"][0], c["tpr"][0], c["fpr"][-1], c["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    pos, neg = s[y == 1], s[y == 0]
    for f, t, thr in zip(c["fpr"], c["tpr"], c["roc_thresholds"]):
        assert f == pytest.approx(np.mean(neg >= thr))
        assert t == pytest.approx(np.mean(pos >= thr))
    for p, r, thr in zip(c["precision"], c["recall"], c["pr_thresholds"]):
        ref_p, ref_r, _ = naive_prf(y, s, thr)
        assert (p, r) == (pytest.approx(ref_p), pytest.approx(ref_r))


def test_roc_pr_curves_hand_example():
    c = M.roc_pr_curves([0, 1], [0.2, 0.7])
    assert c["fpr"] == [0.0, 0.0, 1.0]
    assert c["tpr"] == [0.0, 1.0, 1.0]
    assert c["roc_thresholds"] == pytest.approx([1.7, 0.7, 0.2])


# --------------------------------------------------------------------------- #
# retrieval_metrics
# --------------------------------------------------------------------------- #
def test_retrieval_metrics_hand_example():
    gallery = ["a", "b", "a", "c"]
    queries = ["a", "b", "z"]  # "z" is not in the gallery
    sim = np.array(
        [
            [0.9, 0.8, 0.1, 0.5],  # a: ranking a(1) b c a(4)  -> AP (1 + 2/4)/2 = 0.75, RR 1
            [0.9, 0.2, 0.3, 0.4],  # b: ranking a c a b(4)     -> AP 1/4, RR 1/4
            [0.1, 0.2, 0.3, 0.4],  # z: excluded
        ]
    )
    m = M.retrieval_metrics(queries, gallery, sim, ks=(1, 2, 4))
    assert m["r1"] == pytest.approx(50.0)
    assert m["r2"] == pytest.approx(50.0)
    assert m["r4"] == pytest.approx(100.0)
    assert m["map"] == pytest.approx((0.75 + 0.25) / 2)
    assert m["mrr"] == pytest.approx((1.0 + 0.25) / 2)
    assert m["num_queries"] == 2
    assert m["num_queries_without_match"] == 1
    json.dumps(m)


def test_retrieval_default_ks_and_k_larger_than_gallery():
    m = M.retrieval_metrics([0, 1], [1, 0], np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert {"r1", "r5", "r10", "map", "mrr"} <= set(m)
    assert m["r1"] == 0.0 and m["r5"] == 100.0 and m["r10"] == 100.0
    assert m["map"] == pytest.approx(0.5) and m["mrr"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_retrieval_metrics_vs_naive(seed):
    rng = np.random.default_rng(200 + seed)
    nq, ng = 25, 30
    gl = rng.integers(0, 8, ng)
    ql = rng.integers(0, 10, nq)  # labels 8, 9 never in gallery
    ql[0] = gl[0]
    sim = rng.normal(size=(nq, ng))
    ks = (1, 3, 5, 10)
    got = M.retrieval_metrics(ql, gl, sim, ks=ks)
    ref = naive_retrieval(list(ql), list(gl), sim.tolist(), ks)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v), k
    assert 0.0 <= got["map"] <= 1.0


def test_retrieval_metrics_errors():
    with pytest.raises(ValueError, match="shape"):
        M.retrieval_metrics([0, 1], [0, 1, 2], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="none of the"):
        M.retrieval_metrics([5, 6], [0, 1], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="ks"):
        M.retrieval_metrics([0], [0], np.zeros((1, 1)), ks=(0,))
    with pytest.raises(ValueError, match="NaN"):
        M.retrieval_metrics([0], [0], np.full((1, 1), np.nan))


# --------------------------------------------------------------------------- #
# open_set_metrics
# --------------------------------------------------------------------------- #
def test_open_set_hand_example():
    m = M.open_set_metrics([0.9, 0.8, 0.3], [0.5, 0.1], threshold=0.4)
    assert m["open_set_auroc"] == pytest.approx(5 / 6)
    assert m["known_acceptance"] == pytest.approx(2 / 3)
    assert m["unknown_rejection"] == pytest.approx(0.5)
    assert m["threshold"] == 0.4
    json.dumps(m)
    m2 = M.open_set_metrics([0.9, 0.8], [0.5, 0.1])
    assert m2["open_set_auroc"] == 1.0
    assert "known_acceptance" not in m2 and "unknown_rejection" not in m2
    # a score equal to the threshold counts as accepted (score >= threshold)
    m3 = M.open_set_metrics([0.9, 0.4], [0.4, 0.1], threshold=0.4)
    assert m3["known_acceptance"] == 1.0 and m3["unknown_rejection"] == 0.5


def test_open_set_vs_naive_and_errors():
    rng = np.random.default_rng(7)
    k = np.round(rng.normal(1.0, 1.0, 30), 1)
    u = np.round(rng.normal(0.0, 1.0, 20), 1)
    m = M.open_set_metrics(k, u, threshold=0.5)
    assert m["open_set_auroc"] == pytest.approx(naive_auc(k, u))
    assert m["known_acceptance"] == pytest.approx(sum(v >= 0.5 for v in k) / 30)
    assert m["unknown_rejection"] == pytest.approx(sum(v < 0.5 for v in u) / 20)
    with pytest.raises(ValueError, match="unknown_scores is empty"):
        M.open_set_metrics([0.1], [])
    with pytest.raises(ValueError, match="known_scores contains 1 NaN"):
        M.open_set_metrics([np.nan], [0.1])


# --------------------------------------------------------------------------- #
# confusion / save_confusion
# --------------------------------------------------------------------------- #
def test_confusion_hand_example():
    true = ["cat", "dog", "dog", "fox", "dog"]
    pred = ["cat", "dog", "cat", "dog", "wolf"]  # "wolf" not in labels -> not counted
    cm = M.confusion(true, pred, ["dog", "cat", "fox"])
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    with pytest.raises(ValueError, match="different lengths"):
        M.confusion([1, 2], [1], [1, 2])


def test_save_confusion_csv_png(tmp_path):
    labels = ["dog", "cat"]
    cm = np.array([[3, 1], [0, 2]])
    csv_path, png_path = tmp_path / "out" / "cm.csv", tmp_path / "out" / "cm.png"
    assert M.save_confusion(cm, labels, csv_path, png_path) is None
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["true\\pred", "dog", "cat"], ["dog", "3", "1"], ["cat", "0", "2"]]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["cm.csv", "cm.png"]  # no temp files left
    # float (normalised) matrix, CSV only
    M.save_confusion(cm / cm.sum(axis=1, keepdims=True), labels, csv_path)
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert float(rows[1][1]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shape"):
        M.save_confusion(np.zeros((3, 3)), labels, csv_path)


def test_save_confusion_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "cm.csv"
    path.write_text("old contents")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        M.save_confusion(np.eye(2, dtype=int), ["a", "b"], path)
    assert path.read_text() == "old contents"
    assert os.listdir(tmp_path) == ["cm.csv"]  # temp file cleaned up


def test_threshold_above_huge_max_is_finite_and_strictly_above():
    # predicting everything negative is best; max + 1 == max in floating point here
    t = M.choose_threshold([1, 0, 0], [1e300, 1.5e308, 1.7e308])
    assert math.isfinite(t) and t > 1.7e308
    assert M.verification_metrics([1, 0, 0], [1e300, 1.5e308, 1.7e308])["accuracy"] == pytest.approx(2 / 3)
