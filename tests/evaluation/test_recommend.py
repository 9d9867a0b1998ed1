"""Backbone recommendation: LogME against a direct reference, kNN leave-one-out, rank averaging, per-layer
backbone features, candidate specs, `recommend_backbones` end to end, the CLI, and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.backbones import create_backbone
from model_pkg.recommend import (
    CandidateError,
    RecommendationError,
    ScoreInputError,
    knn_loo_score,
    logme,
    parse_candidate,
    parse_candidates,
    rank_average,
    recommend_backbones,
)
from model_pkg.recommend.__main__ import main as cli_main
from model_pkg.recommend.scores import logme_evidence

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def clusters(n=120, d=24, classes=6, spread=2.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    return spread * centres[labels] + rng.normal(size=(n, d)), labels


# -- scores ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(120, 24), (30, 80)])  # more items than dims, and fewer
def test_logme_matches_direct_evidence_at_its_maximum(shape):
    feats, labels = clusters(n=shape[0], d=shape[1], classes=4, spread=1.0, seed=1)
    score, alpha, beta = logme(feats, labels, return_params=True)
    onehot = np.eye(4)[labels]
    direct = logme_evidence(feats, onehot, alpha, beta)  # explicit (D, D) precision, solve and slogdet
    assert score == pytest.approx(direct.mean(), rel=1e-6, abs=1e-8)
    if shape[0] < shape[1]:  # the features interpolate the labels: beta is held at its bound
        bound = 1e-5 * np.linalg.norm(feats, 2) ** 2
        assert np.all(alpha / beta >= bound * (1 - 1e-9)) and np.isclose(alpha / beta, bound).any()
        return
    # The fixed point maximises the evidence: moving either precision lowers it, for every class.
    for a_scale, b_scale in [(2, 1), (0.5, 1), (1, 1.5), (1, 0.7)]:
        assert np.all(logme_evidence(feats, onehot, alpha * a_scale, beta * b_scale) < direct - 1e-6)


def test_logme_and_knn_prefer_separable_features():
    good, labels = clusters(spread=3.0)
    weak, _ = clusters(spread=0.3)
    weak_labels = labels  # same labels, centres shrunk into the noise
    assert logme(good, labels) > logme(weak, weak_labels) + 0.5
    assert knn_loo_score(good, labels) == 1.0
    assert knn_loo_score(weak, weak_labels) < 0.6
    # Regression form: targets that are a linear function of the features beat unrelated targets.
    rng = np.random.default_rng(2)
    linear = good @ rng.normal(size=(24, 3))
    assert logme(good, linear) > logme(good, rng.normal(size=(120, 3)))
    assert knn_loo_score(good, linear, k=3) > knn_loo_score(good, rng.normal(size=(120, 3)), k=3)


def test_knn_loo_leaves_the_item_itself_out():
    # Two identical photos of class a: each must find the other, not itself; the lone b finds an a.
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array(["a", "a", "b", "c"])
    assert knn_loo_score(feats, labels, k=1) == pytest.approx(0.5)  # a, a right; b -> a, c -> b wrong
    with pytest.raises(ScoreInputError, match="k must be between 1 and 3"):
        knn_loo_score(feats, labels, k=4)


def test_rank_average_is_negated_mean_rank():
    combined = rank_average({"x": [0.9, 0.1, 0.5], "y": [0.2, 0.1, 0.8]})
    np.testing.assert_allclose(combined, [-1.5, -3.0, -1.5])
    with pytest.raises(ScoreInputError, match="one value per candidate"):
        rank_average({"x": [1, 2], "y": [1, 2, 3]})


def test_scores_reject_nan_and_single_class():
    feats, labels = clusters()
    bad = feats.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ScoreInputError, match="NaN/infinite values in 1 of 120 rows"):
        logme(bad, labels)
    with pytest.raises(ScoreInputError, match="NaN"):
        knn_loo_score(bad, labels)
    with pytest.raises(ScoreInputError, match="same label"):
        logme(feats, np.zeros(len(feats), dtype=int))
    with pytest.raises(ScoreInputError, match="targets for 120 feature rows"):
        logme(feats, labels[:10])


# -- backbone layers -------------------------------------------------------------------------------
def test_forward_layers_one_pass_pooled_matches_forward():
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=48).eval()
    assert backbone.layer_names == ["pooled", "tokens", "stage1", "stage2", "stage3", "stage4", "stage5"]
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        out = backbone.forward_layers(x, ["stage2", "pooled", "stage4"])
        assert list(out) == ["stage2", "pooled", "stage4"]
        assert out["stage2"].shape == (2, 24) and out["stage4"].shape == (2, 48)
        torch.testing.assert_close(out["pooled"], backbone(x).pooled)
        only_early = backbone.forward_layers(x, ["stage2"])  # stops early, same values
        torch.testing.assert_close(only_early["stage2"], out["stage2"])
    with pytest.raises(ValueError, match="no layer \\['stage9'\\]; its layers are"):
        backbone.forward_layers(x, ["stage9"])


# -- candidates ------------------------------------------------------------------------------------
def test_parse_candidate_specs(tmp_path):
    c = parse_candidate("tf_efficientnet_lite2@260:stage5")
    assert (c.model, c.image_size, c.layer, c.saved) == ("tf_efficientnet_lite2", 260, "stage5", False)
    assert parse_candidate("tf_efficientnet_lite0").image_size is None
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    saved = parse_candidate(f"{tmp_path / 'm'}@192")
    assert saved.saved and saved.image_size == 192 and saved.layer is None
    with pytest.raises(CandidateError, match="Unknown backbone 'tf_efficientnet_lite9'.*similar names"):
        parse_candidate("tf_efficientnet_lite9@224")
    with pytest.raises(CandidateError, match="not an integer"):
        parse_candidate("tf_efficientnet_lite0@big")
    with pytest.raises(CandidateError, match="does not exist"):
        parse_candidate(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CandidateError, match="has no config.json"):
        parse_candidate(str(tmp_path / "empty"))
    with pytest.raises(CandidateError, match="at least 2 candidates"):
        parse_candidates("tf_efficientnet_lite0@224")
    with pytest.raises(CandidateError, match="listed twice"):
        parse_candidates(["tf_efficientnet_lite0", "tf_efficientnet_lite0"])


# -- recommend_backbones ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dog_folder(dog_faces, tmp_path_factory):
    root = tmp_path_factory.mktemp("dogs")
    for dog in ("327", "335", "367"):
        (root / dog).mkdir()
        for photo in sorted((dog_faces / dog).glob("*.jpg"))[:3]:
            shutil.copy(photo, root / dog / photo.name)
    return root


@pytest.fixture(scope="module")
def saved_embedder(tmp_path_factory):
    torch.manual_seed(0)
    model = ArcFaceEmbedderModel(
        ArcFaceEmbedderConfig(
            backbone="test_efficientnet", backbone_pretrained=False, image_size=32, embedding_size=16, num_classes=3
        )
    )
    folder = tmp_path_factory.mktemp("embedder")
    model.save_pretrained(folder)
    return folder


def test_recommend_backbones_ranks_timm_and_saved_candidates(dog_folder, saved_embedder, tmp_path):
    specs = [
        "tf_efficientnet_lite0@64:pooled",
        "tf_efficientnet_lite0@64:stage3",
        str(saved_embedder),
        f"{saved_embedder}@32:stage2",
    ]
    out_json = tmp_path / "rec.json"
    result = cli_main(["--data", str(dog_folder), "--candidates", ",".join(specs), "--per-class", "3", "--json", str(out_json)])
    assert json.loads(out_json.read_text()) == result
    assert result["num_images"] == 9 and result["num_classes"] == 3
    rows = result["candidates"]
    assert sorted(r["candidate"] for r in rows) == sorted(specs)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and result["recommended"] == rows[0]["candidate"]
    assert result["rank_by"] == "knn_loo"
    assert [r["knn_loo"] for r in rows] == sorted((r["knn_loo"] for r in rows), reverse=True)
    by_logme = cli_main(["--data", str(dog_folder), "--candidates", ",".join(specs), "--per-class", "3", "--rank-by", "logme"])
    assert [r["logme"] for r in by_logme["candidates"]] == sorted((r["logme"] for r in rows), reverse=True)
    by_spec = {r["candidate"]: r for r in rows}
    assert by_spec[str(saved_embedder)]["layer"] == "embedding" and by_spec[str(saved_embedder)]["feature_dim"] == 16
    assert by_spec["tf_efficientnet_lite0@64:pooled"]["feature_dim"] == 1280
    assert by_spec["tf_efficientnet_lite0@64:stage3"]["feature_dim"] == 40
    assert by_spec["tf_efficientnet_lite0@64:pooled"]["shares_pass_with"] == ["tf_efficientnet_lite0@64:stage3"]
    for r in rows:
        assert np.isfinite(r["logme"]) and 0.0 <= r["knn_loo"] <= 1.0
        assert r["embed_seconds"] > 0 and r["score_seconds"] > 0 and r["peak_memory_mb"] >= 0 and r["peak_rss_mb"] > 100


def test_recommend_bad_input_is_clear(dog_folder, saved_embedder, tmp_path, capsys):
    one_class = tmp_path / "one"
    shutil.copytree(dog_folder / "327", one_class / "327")
    with pytest.raises(RecommendationError, match="need at least two identities"):
        recommend_backbones(one_class, ["tf_efficientnet_lite0@64", "tf_efficientnet_lite0@64:stage3"])
    with pytest.raises(RecommendationError, match="at least 2 candidates"):
        recommend_backbones(dog_folder, ["tf_efficientnet_lite0@64"])
    with pytest.raises(RecommendationError, match="rank_by='accuracy' must be one of"):
        recommend_backbones(dog_folder, ["tf_efficientnet_lite0@64", "tf_efficientnet_lite0@64:stage3"], rank_by="accuracy")
    with pytest.raises(CandidateError, match=r"no layer 'stage9'; its layers are \['embedding', 'pooled'"):
        recommend_backbones(dog_folder, [f"{saved_embedder}:stage9", "tf_efficientnet_lite0@64"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--data", str(dog_folder), "--candidates", "resnet_nope,tf_efficientnet_lite0@64"])
    assert exit_info.value.code == 2
    assert "Unknown backbone 'resnet_nope'" in capsys.readouterr().err


def test_recommend_reports_nan_features_by_candidate(dog_folder, saved_embedder):
    nan_dir = saved_embedder.parent / "nan_embedder"
    model = ArcFaceEmbedderModel.from_pretrained(saved_embedder)
    with torch.no_grad():
        model.proj.weight.fill_(float("nan"))
    model.save_pretrained(nan_dir)
    with pytest.raises(RecommendationError, match=f"Candidate '{nan_dir}': features contain .*NaN"):
        recommend_backbones(dog_folder, [str(saved_embedder), str(nan_dir)], per_class=3)
