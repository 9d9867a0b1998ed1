"""`python -m model_pkg.evaluate pair` on a tiny saved pair matcher and the imagenet-cosine baseline."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from model_pkg import PairMatcherConfig, PairMatcherModel, evaluate, evaluation, features
from model_pkg.data import as_dataset, save_splits, subset_by_identities

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
REQUIRED_KEYS = METRIC_KEYS + (
    "threshold",
    "threshold_source",
    "num_pairs",
    "num_positive",
    "model",
    "data",
    "split",
    "set_size",
    "negatives",
    "seed",
    "num_identities",
    "seconds",
)


@pytest.fixture(scope="module")
def dogs(dog_faces, tmp_path_factory):
    """The first 10 dogs (by id) of the read-only DogFaceNet copy with >= 6 photos, copied into a temporary tree."""
    source = dog_faces
    root = tmp_path_factory.mktemp("data") / "dogs"
    ids = sorted((d for d in os.listdir(source) if len(os.listdir(source / d)) >= 6), key=int)[:10]
    for dog in ids:
        shutil.copytree(source / dog, root / dog)
    return root, ids


@pytest.fixture(scope="module")
def splits_file(dogs, tmp_path_factory):
    _, ids = dogs
    path = tmp_path_factory.mktemp("splits") / "splits.json"
    save_splits({"train": [], "val": ids[6:], "test": ids[:6]}, path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = PairMatcherConfig(
        backbone="test_efficientnet", backbone_pretrained=False, image_size=64, hidden_size=32, threshold=0.37
    )
    path = tmp_path_factory.mktemp("model") / "pair_model"
    PairMatcherModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("petmatch_cache")


@pytest.fixture
def cache(monkeypatch, shared_cache):
    """Reference features cached in a temporary folder shared by this module's tests."""
    monkeypatch.setenv("PETMATCH_CACHE", str(shared_cache))
    return shared_cache


def run(argv, capsys=None):
    result = evaluate.main(argv)
    if capsys is not None:
        printed = json.loads(capsys.readouterr().out)
        assert printed == result
    return result


def check_result(result, num_pairs):
    for key in REQUIRED_KEYS:
        assert key in result, key
    for key in METRIC_KEYS:
        assert 0.0 <= result[key] <= 1.0, (key, result[key])
    assert result["num_pairs"] == num_pairs
    assert result["num_positive"] == num_pairs // 2
    assert math.isfinite(result["threshold"])
    assert result["seconds"] >= 0


def without_time(result):
    return {k: v for k, v in result.items() if k != "seconds"}


def test_pair_random_saved_model(dogs, model_dir, cache, tmp_path, capsys):
    root, _ = dogs
    out = tmp_path / "nested" / "dir" / "random.json"
    result = run(
        [
            "pair",
            "--model",
            str(model_dir),
            "--data",
            str(root),
            "--set-size",
            "2",
            "--pairs",
            "20",
            "--seed",
            "0",
            "--negatives",
            "random",
            "--json",
            str(out),
        ],
        capsys,
    )
    check_result(result, 20)
    assert result["threshold_source"] == "stored"
    assert result["threshold"] == pytest.approx(0.37)
    assert result["split"] == "all"
    assert result["num_identities"] == 10
    assert result["negatives"] == "random" and result["set_size"] == 2 and result["seed"] == 0
    assert json.loads(out.read_text()) == result
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp file left behind


def test_pair_hard_saved_model_is_deterministic_and_cached(dogs, model_dir, splits_file, cache, tmp_path, monkeypatch):
    root, _ = dogs
    argv = [
        "pair",
        "--model",
        str(model_dir),
        "--data",
        str(root),
        "--splits",
        str(splits_file),
        "--set-size",
        "2",
        "--pairs",
        "20",
        "--seed",
        "3",
        "--negatives",
        "hard",
        "--json",
        str(tmp_path / "hard.json"),
    ]
    first = run(argv)
    check_result(first, 20)
    assert first["threshold_source"] == "stored" and first["negatives"] == "hard"
    assert first["split"] == "test" and first["num_identities"] == 6
    files = sorted(cache.glob("reference-tf_efficientnet_lite0-*.npy"))
    assert files, "reference features were not cached"

    # Second run: same JSON, and the reference features come from the cache (no pooling again).
    def no_recompute(*args, **kwargs):
        raise AssertionError("reference features recomputed despite the cache")

    monkeypatch.setattr(features, "compute_pooled", no_recompute)
    second = run(argv)
    assert without_time(second) == without_time(first)
    assert sorted(cache.glob("reference-tf_efficientnet_lite0-*.npy")) == files


def test_hard_negatives_pair_each_dog_with_its_nearest_dog(dogs, splits_file, cache):
    root, _ = dogs
    groups, _ = evaluation.load_groups(str(root), str(splits_file), "test", None)
    assert len(groups) == 6
    neighbours, feats = evaluation.hard_neighbours(groups, k=1)
    assert set(feats) == {p for ps in groups.values() for p in ps}
    pairs, _ = evaluation.draw_pairs(groups, 30, 2, 5, "hard", 32, "data")
    negatives = [p for p in pairs if p.label == 0]
    assert len(negatives) == 15
    for pair in negatives:
        assert pair.id_b == neighbours[pair.id_a][0]
    # The reference neighbour really is the most cosine-similar other dog.
    means = {d: np.mean([feats[p] for p in ps], axis=0) for d, ps in groups.items()}
    dog = sorted(groups)[0]
    sims = {
        o: float(np.dot(means[dog], means[o]) / np.linalg.norm(means[dog]) / np.linalg.norm(means[o])) for o in groups if o != dog
    }
    assert neighbours[dog][0] == max(sims, key=sims.get)


def test_baseline_val_threshold_separates_dogs(dogs, splits_file, cache, tmp_path, capsys):
    root, ids = dogs
    result = run(
        [
            "pair",
            "--model",
            "imagenet-cosine",
            "--data",
            str(root),
            "--splits",
            str(splits_file),
            "--set-size",
            "3",
            "--pairs",
            "40",
            "--seed",
            "0",
            "--negatives",
            "random",
            "--json",
            str(tmp_path / "baseline.json"),
            "--save-scores",
            str(tmp_path / "scores" / "baseline.npz"),
        ],
        capsys,
    )
    check_result(result, 40)
    assert result["model"] == "imagenet-cosine"
    assert result["threshold_source"] == "val"
    with np.load(tmp_path / "scores" / "baseline.npz") as saved:  # the pairs behind the numbers, for ROC / PR
        assert saved["labels"].shape == saved["scores"].shape == (40,) and int(saved["labels"].sum()) == 20
        assert float(saved["threshold"]) == pytest.approx(result["threshold"], abs=1e-6)
        from sklearn.metrics import roc_auc_score

        assert roc_auc_score(saved["labels"], saved["scores"]) == pytest.approx(result["roc_auc"], abs=1e-6)
    assert result["split"] == "test" and result["num_identities"] == 6
    assert -1.0 <= result["threshold"] <= 1.0  # a cosine similarity
    assert result["roc_auc"] > 0.8


def test_baseline_without_splits_uses_oracle_threshold(dogs, cache):
    root, ids = dogs
    # A Dataset of the six test dogs (as_dataset input): the same photos, so the cached reference is reused.
    table = subset_by_identities(as_dataset(str(root)), ids[:6])
    result = evaluation.evaluate_pair("imagenet-cosine", table, set_size=2, pairs=20, seed=1, negatives="hard")
    check_result(result, 20)
    assert result["split"] == "all" and result["num_identities"] == 6
    assert result["threshold_source"] == "oracle"
    assert "oracle" in result["note"]
    assert result["accuracy"] == result["best_accuracy"]


def test_baseline_threshold_on_the_evaluated_split_is_oracle(dogs, splits_file, cache):
    root, _ = dogs
    result = evaluation.evaluate_pair(
        "imagenet-cosine",
        str(root),
        set_size=2,
        pairs=10,
        seed=0,
        negatives="hard",
        splits=str(splits_file),
        split="test",
        threshold_split="test",
    )
    assert result["threshold_source"] == "oracle" and result["threshold_split"] is None


def test_evaluate_pair_with_loaded_model_and_split(dogs, model_dir, splits_file, cache):
    root, ids = dogs
    model = PairMatcherModel.from_pretrained(model_dir, dtype=torch.float32)
    result = evaluation.evaluate_pair(
        model, str(root), set_size=2, pairs=10, seed=0, negatives="random", splits=str(splits_file), split="val"
    )
    check_result(result, 10)
    assert result["threshold_source"] == "stored"
    assert result["split"] == "val" and result["num_identities"] == 4
    # Same pairs and scores as the CLI path that loads the folder itself.
    again = evaluation.evaluate_pair(
        str(model_dir), str(root), set_size=2, pairs=10, seed=0, splits=str(splits_file), split="val"
    )
    for key in METRIC_KEYS:
        assert again[key] == pytest.approx(result[key])


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
def pair_args(model, data, *extra):
    return ["pair", "--model", str(model), "--data", str(data), "--set-size", "2", "--pairs", "10", *extra]


def test_missing_model_dir(dogs, tmp_path):
    root, _ = dogs
    with pytest.raises(SystemExit, match="does not exist"):
        evaluate.main(pair_args(tmp_path / "nope", root))
    with pytest.raises(ValueError, match="does not exist"):
        evaluation.evaluate_pair(str(tmp_path / "nope"), str(root), 2, 10)


def test_not_a_pair_matcher(dogs, tmp_path):
    root, _ = dogs
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SystemExit, match="not a pair matcher"):
        evaluate.main(pair_args(other, root))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no config.json"):
        evaluate.main(pair_args(empty, root))


def test_missing_data_dir(model_dir, tmp_path):
    with pytest.raises(SystemExit, match="data folder .* does not exist"):
        evaluate.main(pair_args(model_dir, tmp_path / "missing"))


def test_unknown_split(dogs, model_dir, splits_file):
    root, _ = dogs
    with pytest.raises(SystemExit, match="'holdout' is not in"):
        evaluate.main(pair_args(model_dir, root, "--splits", str(splits_file), "--split", "holdout"))
    with pytest.raises(ValueError, match="'holdout' is not in"):
        evaluation.evaluate_pair("imagenet-cosine", str(root), 2, 10, splits=str(splits_file), threshold_split="holdout")


def test_too_few_identities(dogs, model_dir, tmp_path):
    root, ids = dogs
    one_dog = tmp_path / "one.json"
    save_splits({"train": ids[1:], "val": [], "test": ids[:1]}, one_dog)
    with pytest.raises(SystemExit, match="too few identities"):
        evaluate.main(pair_args(model_dir, root, "--splits", str(one_dog)))
    with pytest.raises(SystemExit, match="too few identities"):
        evaluate.main(["pair", "--model", str(model_dir), "--data", str(root), "--set-size", "20", "--pairs", "10"])


def test_subcommand_required():
    with pytest.raises(SystemExit):
        evaluate.main([])
    with pytest.raises(SystemExit):
        evaluate.main(["pair", "--model", "imagenet-cosine", "--data", "x", "--negatives", "medium"])
