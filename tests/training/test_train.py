"""The training entry and the high-level API on a tiny model and a few real dogs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from model_pkg.pair_matcher import PairMatcherModel
from model_pkg.pair_matcher.pipeline import match_sets
from model_pkg.pair_matcher.trainer import PairMatchingTrainer, save_with_card

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOGS = os.path.join(ROOT, "tests", "photos", "dog_faces")  # real dog faces that ship with the repository
TINY_MODEL = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "hidden_size": 32}


@pytest.fixture(scope="module")
def dog_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("dogs")
    for dog in sorted(os.listdir(DOGS), key=int)[:12]:
        shutil.copytree(os.path.join(DOGS, dog), root / dog)
    return root


def run_tiny(dog_tree, out, *extra):
    from train.run import main

    return main(
        [
            "--task",
            "pair",
            "--config",
            os.path.join(ROOT, "train", "configs", "pair_matcher.yaml"),
            "--set",
            f"data_dir={dog_tree}",
            "--set",
            f"output_dir={out}",
            "--set",
            "splits_file=null",
            "--set",
            f"model={json.dumps(TINY_MODEL)}",
            "--set",
            "frozen_steps=6",
            "--set",
            "finetune_steps=4",
            "--set",
            "eval_steps=5",
            "--set",
            "val_pairs=12",
            "--set",
            "batch_size=4",
            "--set",
            "logging_steps=5",
            *extra,
        ]
    )


def test_run_trains_both_phases_and_saves(dog_tree, tmp_path):
    summary = run_tiny(dog_tree, tmp_path / "run")
    model = PairMatcherModel.from_pretrained(tmp_path / "run" / "model")
    frozen = PairMatcherModel.from_pretrained(tmp_path / "run" / "frozen_phase")
    assert 0.0 <= model.config.threshold <= 1.0
    assert summary["val"]["threshold"] == pytest.approx(model.config.threshold)
    # the fine-tuning phase changed the backbone (its last checkpoint; the model kept is the best evaluated one, which
    # on 12 dogs may be the frozen phase's); the frozen phase did not touch it
    tuned = PairMatcherModel.from_pretrained(tmp_path / "run" / "checkpoints" / "checkpoint-10")
    changed = [not torch.equal(a, b) for a, b in zip(tuned.backbone.state_dict().values(), frozen.backbone.state_dict().values())]
    assert any(changed)
    best = tmp_path / "run" / "checkpoints" / f"checkpoint-{summary['best_global_step']}"
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), PairMatcherModel.from_pretrained(best).state_dict().values())
    )
    splits = json.load(open(tmp_path / "run" / "splits.json"))
    assert not set(splits["train"]) & set(splits["test"])
    state = json.load(open(tmp_path / "run" / "checkpoints" / "checkpoint-10" / "trainer_state.json"))
    assert any("eval_roc_auc" in entry for entry in state["log_history"])


def test_run_resumes_from_latest_checkpoint(dog_tree, tmp_path):
    run_tiny(dog_tree, tmp_path / "run")
    first = json.load(open(tmp_path / "run" / "summary.json"))
    summary = run_tiny(dog_tree, tmp_path / "run", "--set", "finetune_steps=9")  # 5 more steps from checkpoint-10
    state = json.load(open(tmp_path / "run" / "checkpoints" / "checkpoint-15" / "trainer_state.json"))
    assert state["global_step"] == 15
    assert first["training"]["finetune_steps"] == 4 and summary["training"]["finetune_steps"] == 9


def test_run_rejects_unknown_option(dog_tree, tmp_path):
    with pytest.raises(SystemExit, match="frozen_stepz"):
        run_tiny(dog_tree, tmp_path / "run", "--set", "frozen_stepz=3")


def test_high_level_api_with_dataframe(dog_tree, tmp_path):
    rows = [(str(p), p.parent.name) for p in sorted(dog_tree.glob("*/*.jpg"))]
    df = pd.DataFrame(rows, columns=["x", "y"])
    trainer = PairMatchingTrainer(
        output_dir=str(tmp_path / "api"),
        model=TINY_MODEL,
        frozen_steps=4,
        finetune_steps=0,
        eval_steps=4,
        val_pairs=12,
        batch_size=4,
    )
    trainer.train(df)
    photos = sorted(str(p) for p in (dog_tree / "327").glob("*.jpg"))
    result = trainer.predict(photos[:2], photos[2:3])
    assert 0.0 <= result.probability <= 1.0 and result.photo_similarity.shape == (2, 1)
    trainer.save(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "README.md").read_text().count("petmatch") >= 1
    again = PairMatchingTrainer.load(str(tmp_path / "saved"))
    assert again.predict(photos[:2], photos[2:3]).probability == pytest.approx(result.probability, abs=1e-3)


def test_match_sets_errors(tmp_path):
    model = PairMatcherModel.from_pretrained(_tiny_saved(tmp_path))
    photo = os.path.join(DOGS, "1000", "1000.0.jpg")
    with pytest.raises(ValueError, match="Set A is empty"):
        match_sets(model, [], [photo])
    with pytest.raises(TypeError, match="single path"):
        match_sets(model, photo, [photo])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="bad.jpg"):
        match_sets(model, [str(bad)], [photo])


def test_set_of_fifty_photos(tmp_path):
    model = PairMatcherModel.from_pretrained(_tiny_saved(tmp_path))
    photos = [os.path.join(DOGS, "1000", f) for f in sorted(os.listdir(os.path.join(DOGS, "1000")))]
    result = match_sets(model, (photos * 50)[:50], photos[:1])
    assert result.photo_similarity.shape == (50, 1)


def _tiny_saved(tmp_path) -> str:
    from model_pkg import PairMatcherConfig

    path = str(tmp_path / "tiny")
    save_with_card(PairMatcherModel(PairMatcherConfig(**TINY_MODEL)), path, weights_dtype=torch.float16)
    return path


def test_per_set_size_thresholds():
    from model_pkg import PairMatcherConfig
    from model_pkg.pair_matcher.calibration import calibrate_thresholds

    model = PairMatcherModel(PairMatcherConfig(**TINY_MODEL, threshold=0.5, set_size_thresholds={1: 0.2, 3: 0.9}))
    assert model.decision_threshold(1, 5) == pytest.approx(0.2)
    assert model.decision_threshold(2, 2) == pytest.approx(0.2)  # no key 2: the largest key below
    assert model.decision_threshold(4, 3) == pytest.approx(0.9)
    # 1v1 scores separate at 0.3, 2v2 scores at 0.8: one threshold could not serve both
    records = [{"paths_a": ["a"] * n, "paths_b": ["b"] * n, "label": y} for n, y in [(1, 1), (1, 0), (2, 1), (2, 0)] * 3]
    scores = np.array([0.4, 0.2, 0.9, 0.7] * 3)
    calibrate_thresholds(model, records, scores)
    assert 0.2 < model.config.set_size_thresholds["1"] <= 0.4
    assert 0.7 < model.config.set_size_thresholds["2"] <= 0.9
    with pytest.raises(ValueError, match="set_size_thresholds"):
        PairMatcherConfig(set_size_thresholds={0: 0.5})


# -- a matcher that scores sets with a trained ArcFace embedder (issue 12) ---------------------------
TINY_EMBEDDER = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "embedding_size": 16}


def _tiny_embedder(seed=0):
    from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel

    torch.manual_seed(seed)
    embedder = ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**TINY_EMBEDDER)).eval()
    with torch.no_grad():  # BatchNorm statistics as after training, so folding it into the projection is tested
        embedder.bn.running_mean.uniform_(-0.5, 0.5)
        embedder.bn.running_var.uniform_(0.5, 2.0)
        embedder.bn.weight.uniform_(0.5, 1.5)
        embedder.bn.bias.uniform_(-0.2, 0.2)
    return embedder


def test_matcher_from_embedder_scores_the_cosine_of_mean_embeddings():
    import torch.nn.functional as F

    embedder = _tiny_embedder()
    matcher = PairMatcherModel.from_embedder(embedder).eval()
    a, b = torch.randn(2, 3, 3, 32, 32), torch.randn(2, 2, 3, 32, 32)
    mask_a = torch.tensor([[True, True, True], [True, False, False]])
    with torch.no_grad():
        emb_a = embedder.get_image_features(pixel_values=a.flatten(0, 1)).reshape(2, 3, -1)
        emb_b = embedder.get_image_features(pixel_values=b.flatten(0, 1)).reshape(2, 2, -1)
        out = matcher(pixel_values_a=a, mask_a=mask_a, pixel_values_b=b)
    mean_a = torch.stack([emb_a[0].mean(0), emb_a[1, :1].mean(0)])
    cosine = F.cosine_similarity(mean_a, emb_b.mean(1), dim=-1)
    assert torch.allclose(out.logits, matcher.head.scale * cosine + matcher.head.bias, atol=1e-4)
    # the saved matcher needs neither the embedder nor a weight package
    assert matcher.config.photo_norm == "l2" and matcher.config.head == "siamese"


def run_from_embedder(dog_tree, tmp_path, *extra):
    """The pair recipe on a saved tiny embedder: nothing trained, thresholds chosen on random-negative pairs."""
    _tiny_embedder().save_pretrained(tmp_path / "embedder")
    return run_tiny(
        dog_tree,
        tmp_path / "run",
        "--set",
        f"embedder={tmp_path / 'embedder'}",
        "--set",
        "model={}",
        "--set",
        "frozen_steps=0",
        "--set",
        "finetune_steps=0",
        "--set",
        "calibration_negatives=random",
        *extra,
    )


def test_run_builds_a_matcher_from_an_embedder_with_thresholds_per_set_size(dog_tree, tmp_path):
    summary = run_from_embedder(
        dog_tree,
        tmp_path,
        "--set",
        "calibration_set_sizes=[1,2]",
        "--set",
        "calibration_pairs=20",
    )
    model = PairMatcherModel.from_pretrained(tmp_path / "run" / "model")
    assert set(model.config.set_size_thresholds) == {"1", "2"}
    assert summary["calibration_negatives"] == "random"
    assert {"1v1_random", "2v2_random"} <= set(summary["val_by_size"])
    assert summary["val_by_size"]["1v1_random"]["threshold"] == pytest.approx(model.decision_threshold(1, 1))
    assert model.head.scale.item() != 10.0  # the cosine head's scale and bias were fitted on validation pairs
    assert not os.path.isdir(tmp_path / "run" / "checkpoints")  # nothing was trained
    with pytest.raises(SystemExit, match="frozen_steps=0 and finetune_steps=0"):
        run_tiny(dog_tree, tmp_path / "bad", "--set", f"embedder={tmp_path / 'embedder'}")
    with pytest.raises(SystemExit, match="calibration_negatives"):
        run_tiny(dog_tree, tmp_path / "bad", "--set", "calibration_negatives=hardest")


def test_run_guards_thresholds_against_lookalikes_within_the_tolerance(dog_tree, tmp_path):
    """`calibration_hard_tolerance`: per set size, within that much of the best random-negative accuracy,
    the threshold that decides best on hard-negative validation pairs (never lower on hard pairs)."""
    common = ("--set", "calibration_set_sizes=[1]", "--set", "calibration_pairs=40")
    plain = run_from_embedder(dog_tree, tmp_path / "plain", *common)
    guarded = run_from_embedder(dog_tree, tmp_path / "guarded", *common, "--set", "calibration_hard_tolerance=0.05")
    p, g = plain["val_by_size"], guarded["val_by_size"]
    assert guarded["calibration_hard_tolerance"] == 0.05
    assert g["1v1_random"]["accuracy"] >= p["1v1_random"]["accuracy"] - 0.05 - 1e-9
    assert g["1v1_hard"]["accuracy"] >= p["1v1_hard"]["accuracy"]
    with pytest.raises(SystemExit, match="calibration_hard_tolerance"):
        run_from_embedder(
            dog_tree, tmp_path / "bad", "--set", "calibration_negatives=mixed", "--set", "calibration_hard_tolerance=0.01"
        )


def test_snorm_matcher_normalises_against_its_cohort_and_round_trips(tmp_path):
    import torch.nn.functional as F

    from model_pkg.pair_matcher.configuration_pair_matcher import PairMatcherConfig
    from model_pkg.pair_matcher.snorm import adaptive_snorm

    embedder = _tiny_embedder()
    torch.manual_seed(1)
    cohort = torch.randn(12, 16)
    matcher = PairMatcherModel.from_embedder(embedder, cohort=cohort, cohort_top_k=5).eval()
    assert matcher.config.score_norm == "asnorm" and matcher.config.cohort_size == 12
    # the s-normed score, by hand: each side's cosine to its 5 closest cohort dogs gives mean and spread
    a, b = F.normalize(torch.randn(3, 16), dim=-1), F.normalize(torch.randn(3, 16), dim=-1)
    unit = F.normalize(cohort, dim=-1)
    top_a, top_b = (a @ unit.T).topk(5).values, (b @ unit.T).topk(5).values
    score = (a * b).sum(-1)
    expected = 0.5 * ((score - top_a.mean(-1)) / top_a.std(-1) + (score - top_b.mean(-1)) / top_b.std(-1))
    assert torch.allclose(adaptive_snorm(score, a, b, unit, 5), expected, atol=1e-5)
    # the cohort is saved with the weights
    matcher.save_pretrained(tmp_path / "m")
    loaded = PairMatcherModel.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(loaded.cohort, unit, atol=1e-6)
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            loaded(pixel_values_a=x, pixel_values_b=x.flip(1)).logits, matcher(pixel_values_a=x, pixel_values_b=x.flip(1)).logits
        )
    with pytest.raises(ValueError, match="cohort_top_k"):
        PairMatcherConfig(head="siamese", score_norm="asnorm", cohort_size=3, cohort_top_k=5)
    with pytest.raises(ValueError, match="siamese"):
        PairMatcherConfig(head="concat_mlp", score_norm="asnorm", cohort_size=10, cohort_top_k=5)


def test_snorm_photo_statistics_average_each_photos_own_and_survive_padding(tmp_path):
    """cohort_stats="photos": a side's mean and spread are the mean of its real photos' own; for single
    photos that is the set statistics; padded photos do not count; the choice is saved with the config."""
    import torch.nn.functional as F

    from model_pkg.pair_matcher.configuration_pair_matcher import PairMatcherConfig
    from model_pkg.pair_matcher.snorm import adaptive_snorm

    embedder = _tiny_embedder()
    torch.manual_seed(2)
    cohort = torch.randn(12, 16)
    by_set = PairMatcherModel.from_embedder(embedder, cohort=cohort, cohort_top_k=5).eval()
    by_photo = PairMatcherModel.from_embedder(embedder, cohort=cohort, cohort_top_k=5, cohort_stats="photos").eval()
    unit = F.normalize(cohort, dim=-1)
    one_a, one_b = torch.randn(2, 1, 3, 32, 32), torch.randn(2, 1, 3, 32, 32)
    a, b = torch.randn(2, 3, 3, 32, 32), torch.randn(2, 3, 3, 32, 32)
    mask_a = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        single = [m(pixel_values_a=one_a, pixel_values_b=one_b).logits for m in (by_set, by_photo)]
        assert torch.allclose(single[0], single[1], atol=1e-5)
        got = by_photo(pixel_values_a=a, mask_a=mask_a, pixel_values_b=b).logits
        set_logits = by_set(pixel_values_a=a, mask_a=mask_a, pixel_values_b=b).logits
        padded = by_photo(
            pixel_values_a=torch.cat([a, torch.randn(2, 1, 3, 32, 32)], 1),
            mask_a=torch.cat([mask_a, torch.zeros(2, 1, dtype=torch.bool)], 1),
            pixel_values_b=b,
        ).logits
        # by hand: photo embeddings from the embedder, each photo's top-5 cohort cosines
        emb_a = F.normalize(embedder.get_image_features(pixel_values=a.flatten(0, 1)), dim=-1).reshape(2, 3, -1)
        emb_b = F.normalize(embedder.get_image_features(pixel_values=b.flatten(0, 1)), dim=-1).reshape(2, 3, -1)
    expected = []
    for i in range(2):
        pa, pb = emb_a[i][mask_a[i]], emb_b[i]
        va, vb = F.normalize(pa.mean(0), dim=-1), F.normalize(pb.mean(0), dim=-1)
        top_a, top_b = (pa @ unit.T).topk(5).values, (pb @ unit.T).topk(5).values
        score = va @ vb
        z_a = (score - top_a.mean(-1).mean()) / top_a.std(-1).mean()
        z_b = (score - top_b.mean(-1).mean()) / top_b.std(-1).mean()
        expected.append(by_photo.head.scale * 0.5 * (z_a + z_b) + by_photo.head.bias)
    assert torch.allclose(got, torch.stack(expected), atol=1e-4)
    assert torch.allclose(padded, got, atol=1e-5)
    assert torch.isfinite(set_logits).all()
    # photos that disagree: their mean vector's cohort scores are not the mean of theirs, so the two statistics differ
    photos = F.normalize(torch.randn(1, 3, 16), dim=-1)
    mean = F.normalize(photos.mean(1), dim=-1)
    score = torch.tensor([0.5])
    args = (score, mean, mean, unit, 5)
    assert not torch.allclose(adaptive_snorm(*args), adaptive_snorm(*args, (photos, torch.ones(1, 3, dtype=torch.bool)), None))
    by_photo.save_pretrained(tmp_path / "m")
    assert PairMatcherModel.from_pretrained(tmp_path / "m").config.cohort_stats == "photos"
    with pytest.raises(ValueError, match="cohort_stats"):
        PairMatcherConfig(head="siamese", score_norm="asnorm", cohort_size=10, cohort_top_k=5, cohort_stats="mean")


def test_run_keeps_snorm_only_when_it_decides_better_on_validation(dog_tree, tmp_path):
    summary = run_from_embedder(
        dog_tree,
        tmp_path,
        "--set",
        "calibration_set_sizes=[1]",
        "--set",
        "calibration_pairs=20",
        "--set",
        "score_norm=auto",
        "--set",
        "cohort_dogs=6",
        "--set",
        "cohort_top_k=3",
    )
    choice = summary["score_norm"]
    model = PairMatcherModel.from_pretrained(tmp_path / "run" / "model")
    kept = "asnorm" if choice["snorm_accuracy"] > choice["plain_accuracy"] else None
    assert choice["kept"] == kept == model.config.score_norm
    with pytest.raises(SystemExit, match="score_norm applies"):
        run_tiny(dog_tree, tmp_path / "bad", "--set", "score_norm=auto")
