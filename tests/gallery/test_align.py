"""mini-vec2vec aligner: unpaired fitting, mapping, save/load, the gallery upgrade use, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_pkg.align import AlignerNotFittedError, MiniVec2VecAligner, MiniVec2VecConfig
from model_pkg.gallery import GalleryIndex, GalleryMismatchError
from model_pkg.metrics import alignment_metrics

LATENT, DIM_A, DIM_B = 16, 64, 48
# Small but complete pipeline: every stage runs, on a few thousand points.
TINY = dict(
    anchor_runs=4,
    anchor_clusters=12,
    qap_restarts=4,
    match_k=10,
    refine1_iterations=10,
    refine1_sample=500,
    refine1_k=10,
    refine2_clusters=40,
)


class TwoEmbedders:
    """Two "embedders" of the same animals: photos of identities grouped in breeds, seen by A through
    one linear map and by B through another one with a mild nonlinearity, other means and dimensions."""

    def __init__(self, seed: int = 0, breeds: int = 12, ids_per_breed: int = 25):
        rng = np.random.default_rng(seed)
        breed_centres = rng.normal(size=(breeds, LATENT)) * rng.uniform(1.0, 3.0, size=(breeds, 1))
        self.identities = np.repeat(breed_centres, ids_per_breed, axis=0) + rng.normal(size=(breeds * ids_per_breed, LATENT))
        self.breed_weights = rng.dirichlet(np.full(breeds, 3.0)).repeat(ids_per_breed) / ids_per_breed
        self.map_a = np.linalg.qr(rng.normal(size=(DIM_A, LATENT)))[0].T  # (LATENT, DIM_A), orthonormal rows
        self.map_b = np.linalg.qr(rng.normal(size=(DIM_B, LATENT)))[0].T  # (LATENT, DIM_B)
        self.mean_a, self.mean_b = rng.normal(size=DIM_A) * 2, rng.normal(size=DIM_B) * 2

    def photos(self, n: int, seed: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n photos -> (identity of each, A's embeddings (n, DIM_A), B's embeddings (n, DIM_B))."""
        rng = np.random.default_rng(seed)
        if ids is None:
            ids = rng.choice(len(self.identities), size=n, p=self.breed_weights)
        z = self.identities[ids] + 0.3 * rng.normal(size=(len(ids), LATENT))
        a = z @ self.map_a + self.mean_a + 0.02 * rng.normal(size=(len(ids), DIM_A))
        b = z @ self.map_b + 0.05 * np.tanh(z @ self.map_b) + self.mean_b
        return ids, a.astype(np.float32), b.astype(np.float32)


@pytest.fixture(scope="module")
def world():
    return TwoEmbedders()


@pytest.fixture(scope="module")
def fitted(world, torch_single_thread):
    """A aligner fitted from A to B on two disjoint, unpaired samples."""
    _, xa, _ = world.photos(3000, seed=1)
    _, _, xb = world.photos(3000, seed=2)
    aligner = MiniVec2VecAligner(MiniVec2VecConfig(seed=0, **TINY))
    history = aligner.align(xa, xb, progress=False)
    return aligner, history, xa, xb


def test_recovers_the_map_without_pairs(world, fitted):
    aligner, history, _, _ = fitted
    _, ea, eb = world.photos(1000, seed=3)
    metrics = aligner.evaluate(ea, eb)
    assert metrics["top1"] >= 0.9 and metrics["mean_cosine"] >= 0.9, metrics
    # the same pairs before alignment: other means, other axes, chance level
    unaligned = alignment_metrics(ea[:, :DIM_B], eb)
    assert unaligned["top1"] < 0.05
    assert [h["stage"] for h in history] == ["anchors+procrustes", "refine1", "refine2"]
    assert all(h["seconds"] >= 0 for h in history)
    mapped = aligner(ea)
    assert mapped.shape == (1000, DIM_B) and mapped.dtype == np.float32 and np.isfinite(mapped).all()
    normalized = aligner(ea, output="normalized")
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    # "target" output lives where B's raw vectors live: near B's mean, at B's scale
    assert np.linalg.norm(mapped.mean(0) - eb.mean(0)) < 0.5 * np.linalg.norm(eb.mean(0))


def test_history_reports_eval_pairs_and_seed_makes_it_deterministic(world, torch_single_thread):
    _, xa, _ = world.photos(1500, seed=4)
    _, _, xb = world.photos(1500, seed=5)
    _, ea, eb = world.photos(300, seed=6)
    config = dict(TINY, refine1_iterations=3, refine2_clusters=20)
    one = MiniVec2VecAligner(MiniVec2VecConfig(seed=7, **config))
    history = one.align(xa, xb, eval_pairs=(ea, eb), progress=False)
    two = MiniVec2VecAligner(MiniVec2VecConfig(seed=7, **config))
    two.align(xa, xb, progress=False)
    np.testing.assert_array_equal(one.weight, two.weight)
    assert {"top1", "mean_rank", "mean_cosine"} <= set(history[-1]["eval"])
    assert history[-1]["eval"] == pytest.approx(one.evaluate(ea, eb), abs=1e-5)


def test_csls_self_learning_stage_sharpens_a_rough_map(world, torch_single_thread):
    """The optional last stage: a dictionary by CSLS in both directions over (a sample of) all points,
    then Procrustes. From a rough map (3 Refine-1 steps, no Refine-2) it must bring the map closer."""
    _, xa, _ = world.photos(2000, seed=20)
    _, _, xb = world.photos(2000, seed=21)
    _, ea, eb = world.photos(500, seed=22)
    rough = dict(TINY, refine1_iterations=3, refine2_iterations=0)
    before = MiniVec2VecAligner(MiniVec2VecConfig(seed=0, **rough))
    before.align(xa, xb, progress=False)
    after = MiniVec2VecAligner(MiniVec2VecConfig(seed=0, csls_iterations=4, csls_sample=1500, **rough))
    history = after.align(xa, xb, eval_pairs=(ea, eb), progress=False)
    assert [h["stage"] for h in history] == ["anchors+procrustes", "refine1", "csls"]
    assert history[-1]["iterations"] == 4
    m_before, m_after = before.evaluate(ea, eb), after.evaluate(ea, eb)
    # measured: top-1 .51 -> .58, cosine .744 -> .761 (several photos per animal make top-1 hard here)
    assert m_after["top1"] >= m_before["top1"] + 0.03 and m_after["mean_cosine"] > m_before["mean_cosine"], (m_before, m_after)
    # the map stays (semi-)orthogonal: Procrustes on the dictionary, no smoothing
    np.testing.assert_allclose(after.weight.T @ after.weight, np.eye(DIM_B), atol=1e-4)


def test_save_and_load_round_trip(fitted, tmp_path, world):
    from transformers import AutoConfig

    import model_pkg  # noqa: F401  (registers the config type)

    aligner = fitted[0]
    aligner.save_pretrained(tmp_path / "aligner")
    assert sorted(p.name for p in (tmp_path / "aligner").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MiniVec2VecAligner.from_pretrained(tmp_path / "aligner")
    _, ea, _ = world.photos(50, seed=8)
    np.testing.assert_array_equal(loaded(ea), aligner(ea))
    assert loaded.config.refine2_clusters == TINY["refine2_clusters"] and loaded.config.source_dim == DIM_A
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "aligner"), MiniVec2VecConfig)
    # torch in, torch out
    out = loaded(torch.from_numpy(ea))
    assert isinstance(out, torch.Tensor) and out.shape == (50, DIM_B)
    # a weights file that does not belong to the config is refused
    other = MiniVec2VecAligner.from_pretrained(tmp_path / "aligner")
    other.weight = other.weight * 2
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "aligner" / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="checksum"):
        MiniVec2VecAligner.from_pretrained(tmp_path / "aligner")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        MiniVec2VecAligner.from_pretrained(tmp_path / "missing")


def test_gallery_of_old_embedder_searched_with_new_embedder(world, torch_single_thread):
    """A model upgrade without a backfill: the gallery keeps A's vectors, queries come from B."""
    ids = np.arange(len(world.identities))
    _, gallery_a, _ = world.photos(0, seed=10, ids=ids)  # one registered photo per animal, embedded by A
    _, query_a, query_b = world.photos(0, seed=11, ids=ids)  # a new photo of every animal
    gallery = GalleryIndex(DIM_A, model_id="embedder-A")
    gallery.add(gallery_a, labels=[str(i) for i in ids])
    # fitted from B to A on unpaired photos that are not in the gallery or the queries
    _, _, fit_b = world.photos(3000, seed=12)
    _, fit_a, _ = world.photos(3000, seed=13)
    b_to_a = MiniVec2VecAligner(MiniVec2VecConfig(seed=0, **dict(TINY, anchor_runs=8, qap_restarts=8)))
    b_to_a.align(fit_b, fit_a, progress=False)

    with pytest.raises(GalleryMismatchError):
        gallery.search(query_b, k=1)  # B's raw vectors do not even fit the gallery
    _, labels_a, _ = gallery.search(query_a, k=1)
    _, labels_b, _ = gallery.search(b_to_a(query_b), k=1)
    acc_a = np.mean([row[0] == str(i) for row, i in zip(labels_a, ids)])
    acc_b = np.mean([row[0] == str(i) for row, i in zip(labels_b, ids)])
    assert acc_a >= 0.9
    assert acc_b >= acc_a - 0.1, (acc_a, acc_b)


def test_bad_input_is_refused_clearly(fitted):
    aligner, _, xa, xb = fitted
    with pytest.raises(ValueError, match="dimension 48.*dimension 64"):
        aligner(xb)
    with pytest.raises(ValueError, match="2-D"):
        aligner(xa[0])
    fresh = MiniVec2VecAligner(MiniVec2VecConfig(**TINY))
    with pytest.raises(AlignerNotFittedError, match="align"):
        fresh(xa)
    with pytest.raises(AlignerNotFittedError):
        fresh.save_pretrained("unused")
    with pytest.raises(ValueError, match=r"fewer than the 40 .*refine2_clusters=40"):
        fresh.align(xa[:30], xb, progress=False)
    with pytest.raises(ValueError, match=r"fewer than the 40"):
        fresh.align(xa, xb[:39], progress=False)
    bad = xa.copy()
    bad[5, 3] = np.nan
    with pytest.raises(ValueError, match=r"row\(s\) \[5\] contain NaN"):
        fresh.align(bad, xb, progress=False)
    bad = xa.copy()
    bad[[2, 9]] = 0
    with pytest.raises(ValueError, match=r"row\(s\) \[2, 9\] are zero vectors"):
        fresh.align(bad, xb, progress=False)
    with pytest.raises(ValueError, match=r"row\(s\) \[0\] are zero vectors"):
        aligner(np.zeros((1, DIM_A)))
    with pytest.raises(ValueError, match="eval_pairs"):
        fresh.align(xa, xb, eval_pairs=(xa[:10], xb[:9]), progress=False)
    fixed = MiniVec2VecAligner(MiniVec2VecConfig(source_dim=32, **TINY))
    with pytest.raises(ValueError, match="dimension 64.*dimension 32"):
        fixed.align(xa, xb, progress=False)
    with pytest.raises(ValueError, match="output"):
        aligner(xa, output="raw")


@pytest.mark.parametrize(
    "setting",
    [
        {"anchor_clusters": 1},
        {"refine1_alpha": 1.0},
        {"qap_method": "greedy"},
        {"kmeans_backend": "torch"},
        {"match_k": 0},
        {"source_dim": 0},
        {"refine2_iterations": -1},
        {"csls_iterations": -1},
        {"csls_k": 0},
        {"csls_sample": 0},
    ],
)
def test_config_refuses_bad_settings(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        MiniVec2VecConfig(**setting)


def test_alignment_metrics_against_a_naive_ranking():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(200, 8)).astype(np.float32)
    mapped = targets + 0.8 * rng.normal(size=targets.shape).astype(np.float32)
    got = alignment_metrics(mapped, targets, chunk_size=64)
    a = mapped / np.linalg.norm(mapped, axis=1, keepdims=True)
    b = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    sim = a @ b.T
    ranks = np.array([1 + np.sum(sim[i] > sim[i, i]) for i in range(len(sim))])
    assert got["top1"] == pytest.approx(np.mean(ranks == 1))
    assert got["mean_rank"] == pytest.approx(ranks.mean())
    assert got["mean_cosine"] == pytest.approx(np.mean(np.diag(sim)), abs=1e-6)
    assert 0.2 < got["top1"] < 1.0 and got["num"] == 200
    assert alignment_metrics(targets, targets)["top1"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        alignment_metrics(mapped[:10], targets)
    json.dumps(got)
