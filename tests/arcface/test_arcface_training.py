"""ArcFace embedder training: margin and learning-rate schedules, mixed precision, the training entry, the
gallery CLI, and the CPU recipe's cached activations.

Models are tiny (timm's `test_efficientnet`, 32 px, 16-d embeddings); the end-to-end run trains a few
steps on 12 real dogs copied into a temporary folder, and the gallery CLI evaluates that model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModel

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import ArcFaceEmbedderModel
from model_pkg.arcface.embedding import embed_paths
from model_pkg.arcface.trainer import MarginScheduleCallback, phase_cosine_schedule
from model_pkg.arcface.training import start_from_embedder
from model_pkg.training import ActivationViewCollator, resolve_mixed_precision
from tests.arcface.arcface_helpers import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- margin schedule, LR schedule, precision -----------------------------------------------------------------
def test_margin_schedule_callback_switches_margin_and_freezing(tmp_path):
    model = tiny_model(backbone_trainable_groups=2)
    collator = SimpleNamespace(use_tokens=True)
    frozen_dir = str(tmp_path / "frozen_phase")
    cb = MarginScheduleCallback(
        model, collator, frozen_steps=3, frozen_dir=frozen_dir, margin=0.5, frozen_margin=0.0, ramp_steps=2
    )
    head_before = model.margin_head.weight

    def state(step):
        return SimpleNamespace(global_step=step)

    cb.on_train_begin(None, state(0), None)
    assert model.config.freeze_backbone and collator.use_tokens and model.margin_head.margin == 0.0
    assert not any(p.requires_grad for p in model.backbone.parameters())
    for step in (1, 2):
        cb.on_step_end(None, state(step), None)
        assert model.config.freeze_backbone and model.margin_head.margin == 0.0
    cb.on_step_end(None, state(3), None)  # the switch
    assert not model.config.freeze_backbone and not collator.use_tokens
    assert model.margin_head.margin == pytest.approx(0.25)  # halfway up the 2-step ramp
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(model.backbone.parameters()))  # the last 2 groups only
    assert os.path.isfile(os.path.join(frozen_dir, "config.json"))  # the frozen-phase model was saved
    cb.on_step_end(None, state(4), None)
    assert model.margin_head.margin == pytest.approx(0.5)
    assert model.margin_head.weight is head_before  # the head (its class centres) carries over
    # a resumed run re-applies the phase of its step
    fresh = tiny_model()
    resumed = MarginScheduleCallback(fresh, SimpleNamespace(use_tokens=True), 3, frozen_dir, 0.5)
    resumed.on_train_begin(None, state(7), None)
    assert not fresh.config.freeze_backbone and fresh.margin_head.margin == 0.5


def test_phase_cosine_schedule_restarts_at_switch():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = phase_cosine_schedule(opt, frozen_steps=10, finetune_steps=10, warmup_ratio=0.0)
    factors = [sched.lr_lambdas[0](step) for step in range(20)]
    assert factors[0] == 1.0 and factors[9] < 0.05 and factors[10] == 1.0 and factors[19] < 0.05


def test_mixed_precision_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("auto") == "no" and resolve_mixed_precision("bf16") == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert resolve_mixed_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert resolve_mixed_precision("auto") == "fp16" and resolve_mixed_precision("no") == "no"
    with pytest.raises(ValueError, match="mixed_precision"):
        resolve_mixed_precision("fp8")


# -- training entry and gallery evaluation on real photos -------------------------------------------
@pytest.fixture(scope="module")
def dog_tree(dog_faces, tmp_path_factory):
    source = dog_faces
    root = tmp_path_factory.mktemp("dogs")
    for dog in sorted(os.listdir(source), key=int)[:12]:
        shutil.copytree(source / dog, root / dog)
    return root


def run_tiny(dog_tree, out, *extra):
    from train.run import main

    return main(
        [
            "--task",
            "arcface",
            "--config",
            os.path.join(ROOT, "train", "configs", "arcface_embedder.yaml"),
            "--set",
            f"data_dir={dog_tree}",
            "--set",
            f"output_dir={out}",
            "--set",
            "splits_file=null",
            "--set",
            f"model={json.dumps(TINY)}",
            "--set",
            "p=3",
            "--set",
            "k=2",
            "--set",
            "frozen_steps=6",
            "--set",
            "finetune_steps=4",
            "--set",
            "eval_steps=5",
            "--set",
            "logging_steps=5",
            "--set",
            "margin_ramp_steps=2",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def trained(dog_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("arcface_run")
    return out, run_tiny(dog_tree, out)


def test_run_trains_both_phases_calibrates_and_saves(trained):
    out, summary = trained
    model = AutoModel.from_pretrained(out / "model")
    frozen = ArcFaceEmbedderModel.from_pretrained(out / "frozen_phase")
    assert isinstance(model, ArcFaceEmbedderModel) and model.config.num_classes == 8  # 12 dogs, 70 % train
    finetuned = ArcFaceEmbedderModel.from_pretrained(out / "checkpoints" / "checkpoint-10")

    def backbone_changed(a, b):
        return any(not torch.equal(x, y) for x, y in zip(a.backbone.state_dict().values(), b.backbone.state_dict().values()))

    assert backbone_changed(finetuned, frozen)  # fine-tuning trained the backbone; the frozen phase did not
    assert backbone_changed(model, frozen) == (summary["best_global_step"] > 6)  # the kept model is the best checkpoint
    assert 0.0 <= summary["val"]["recall_at_1"] <= 100.0
    assert model.config.score_threshold == pytest.approx(summary["val"]["calibration"]["score_threshold"])
    assert model.config.gallery_per_id == 1 and not model.config.freeze_backbone
    assert "petmatch_arcface_embedder" in (out / "model" / "README.md").read_text()
    state = json.load(open(out / "checkpoints" / "checkpoint-10" / "trainer_state.json"))
    assert sum("eval_recall_at_1" in entry for entry in state["log_history"]) == 2
    assert state["best_global_step"] in (5, 10)
    assert json.load(open(out / "summary.json"))["finetune_steps"] == 4


def test_run_resumes_and_fresh_starts_over(dog_tree, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    run_tiny(dog_tree, out, "--set", "finetune_steps=9")  # 5 more steps from checkpoint-10
    assert json.load(open(out / "checkpoints" / "checkpoint-15" / "trainer_state.json"))["global_step"] == 15
    run_tiny(dog_tree, out, "--set", "frozen_steps=3", "--set", "finetune_steps=2", "--fresh")
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-5"]


def test_run_fine_tunes_a_saved_embedder_on_kind_balanced_batches(dog_tree, trained, tmp_path):
    # The all-pets recipe: start from a saved embedder, new identities' centres at their photos' mean embeddings,
    # batches drawn per group of identity names (here every other dog stands in for a whole dog)
    tree = tmp_path / "pets"
    for i, dog in enumerate(sorted(os.listdir(dog_tree))):
        shutil.copytree(dog_tree / dog, tree / (f"face-{dog}" if i % 2 else f"body-{dog}"))
    source = ArcFaceEmbedderModel.from_pretrained(trained[0] / "model")
    out = tmp_path / "run"
    summary = run_tiny(
        tree,
        out,
        "--set",
        "frozen_steps=0",
        "--set",
        "finetune_steps=2",
        "--set",
        "eval_on_start=true",
        "--set",
        "head_init=pretrained",
        "--set",
        f"init_from={trained[0] / 'model'}",
        "--set",
        'identity_groups={"face-": 2, "body-": 1}',
    )
    splits = json.load(open(out / "splits.json"))
    state = json.load(open(out / "checkpoints" / "checkpoint-2" / "trainer_state.json"))
    start = next(e for e in state["log_history"] if e.get("step") == 0 and "eval_recall_at_1" in e)
    assert summary["head_init"] == {} and any(d.startswith("body-") for d in splits["train"])
    assert 0.0 <= start["eval_recall_at_1"] <= 100.0
    assert AutoModel.from_pretrained(out / "model").config.num_classes == len(splits["train"])

    # What the run starts from: the saved weights, all but the class centres, which become the mean direction of
    # each new identity's photo embeddings (a centre set this way classifies its own photos' mean exactly)
    fresh = tiny_model(seed=3, num_classes=3)
    start_from_embedder(fresh, str(trained[0] / "model"))
    for name, value in source.state_dict().items():
        if not name.startswith("margin_head."):
            assert torch.equal(value, fresh.state_dict()[name]), name
    pooled = torch.randn(6, fresh.proj.in_features)
    fresh.init_centres_from_features(pooled, [0, 0, 1, 1, 2, 2])
    fresh.eval()
    emb = torch.nn.functional.normalize(fresh.bn(fresh.proj(pooled)), dim=-1)
    expected = torch.nn.functional.normalize(emb.view(3, 2, -1).sum(1), dim=-1)
    assert torch.allclose(fresh.margin_head.weight, expected, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit this recipe's model"):
        start_from_embedder(tiny_model(embedding_size=8), str(trained[0] / "model"))
    with pytest.raises(SystemExit, match="head_init='pretrained' and init_from go together"):
        run_tiny(tree, tmp_path / "bad", "--set", "head_init=pretrained")
    with pytest.raises(SystemExit, match="identity_groups"):
        run_tiny(tree, tmp_path / "bad2", "--set", 'identity_groups={"face-": 1, "body-": 1}')


def test_run_rejects_unknown_option(dog_tree, tmp_path):
    with pytest.raises(SystemExit, match="frozen_stepz"):
        run_tiny(dog_tree, tmp_path / "run", "--set", "frozen_stepz=3")


GALLERY_KEYS = (
    "rank1",
    "rank5",
    "map",
    "open_set_auroc",
    "known_accuracy",
    "unknown_rejection",
    "score_threshold",
    "margin_threshold",
    "threshold_source",
    "gallery_per_id",
    "unknown_fraction",
    "seed",
    "num_gallery",
)


def test_evaluate_gallery_cli(trained, dog_tree, tmp_path, capsys):
    from model_pkg import evaluate

    out = trained[0]
    argv = [
        "gallery",
        "--model",
        str(out / "model"),
        "--data",
        str(dog_tree),
        "--gallery-per-id",
        "2",
        "--unknown-fraction",
        "0.25",
        "--seed",
        "3",
        "--json",
        str(tmp_path / "g.json"),
    ]
    result = evaluate.main(argv)
    assert json.loads(capsys.readouterr().out) == result == json.load(open(tmp_path / "g.json"))
    for key in GALLERY_KEYS:
        assert key in result, key
    assert 0 <= result["rank1"] <= result["rank5"] <= 100 and 0 <= result["map"] <= 1
    assert 0 <= result["open_set_auroc"] <= 1 and result["threshold_source"] == "stored"
    assert result["num_unknown_identities"] == 3 and result["num_gallery"] == 2 * result["num_known_identities"]
    again = evaluate.main(argv)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in result.items() if k != "seconds"}
    # thresholds calibrated on the val split of the run's splits file
    val = evaluate.main(
        [
            "gallery",
            "--model",
            str(out / "model"),
            "--data",
            str(dog_tree),
            "--splits",
            str(out / "splits.json"),
            "--split",
            "test",
            "--unknown-fraction",
            "0.5",
        ]
    )
    assert val["threshold_source"] == "val" and val["split"] == "test" and val["num_identities"] == 2


def test_evaluate_gallery_confusion_matrix(trained, dog_tree, tmp_path):
    import csv

    from model_pkg import evaluate

    out = trained[0]
    prefix = tmp_path / "cm" / "gallery"
    result = evaluate.main(
        [
            "gallery",
            "--model",
            str(out / "model"),
            "--data",
            str(dog_tree),
            "--gallery-per-id",
            "2",
            "--unknown-fraction",
            "0.25",
            "--seed",
            "3",
            "--confusion",
            str(prefix),
        ]
    )
    # written relative to the working directory, like every path in a results file (no machine paths)
    assert os.path.abspath(result["confusion_csv"]) == str(prefix) + ".csv" and Path(result["confusion_png"]).stat().st_size > 0
    rows = list(csv.reader(open(result["confusion_csv"])))
    header, body = rows[0], rows[1:]
    # columns: the registered dogs, then the two rejection decisions; rows: the same labels
    assert header[-2:] == ["unknown", "reshoot"] and [r[0] for r in body] == header[1:]
    counts = np.array([[int(v) for v in r[1:]] for r in body])
    # every query is counted once: the known dogs' queries plus the unknown dogs' queries
    known_queries = result["num_known"]
    assert counts.sum() == known_queries + result["num_unknown"]
    assert counts[-1].sum() == 0  # nobody's true identity is "reshoot"
    assert counts[-2].sum() == result["num_unknown"]  # every unknown dog's query sits on the unknown row


@pytest.mark.parametrize(
    "args, match",
    [
        (["--model", "/no/such/model"], "does not exist"),
        (["--unknown-fraction", "1.0"], r"unknown-fraction must lie in \[0, 1\)"),
        (["--unknown-fraction", "-0.1"], r"unknown-fraction must lie in \[0, 1\)"),
        (["--gallery-per-id", "40"], "larger than the photos available"),
    ],
)
def test_evaluate_gallery_errors(trained, dog_tree, args, match):
    from model_pkg import evaluate

    argv = ["gallery", "--model", str(trained[0] / "model"), "--data", str(dog_tree)]
    with pytest.raises(SystemExit, match=match):
        evaluate.main(argv + args)


def test_embed_paths_matches_forward(trained, dog_tree):
    from model_pkg.data import load_image
    from model_pkg.transforms import create_transform

    model = ArcFaceEmbedderModel.from_pretrained(trained[0] / "model").eval()
    paths = sorted(str(p) for p in (dog_tree / "327").glob("*.jpg"))[:3]
    emb = embed_paths(model, paths)
    assert emb.shape == (3, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    transform = create_transform(model.data_config, train=False)
    with torch.no_grad():
        direct = model(pixel_values=torch.stack([transform(load_image(p)) for p in paths])).embeddings
    assert np.allclose(emb, direct.numpy(), atol=2e-2)  # the batched path caches float16 backbone tokens


# -- the CPU recipe: cached stem activations ---------------------------------------------------------
def test_activation_view_cache_round_trip(dog_tree, tmp_path):
    from model_pkg.features import compute_activation_views

    model = tiny_model(activation_stage=2).eval()
    paths = [str(p) for p in sorted(dog_tree.glob("*/*.jpg"))[:4]]
    cache = str(tmp_path / "acts.arrow")
    acts = compute_activation_views(model.backbone, paths, 2, views=3, image_size=32, seed=1, cache_file=cache)
    assert acts.shape[:2] == (4, 3) and acts.dtype == torch.float16 and os.path.isfile(cache)
    # view 0 is the un-augmented photo: the same map as the eval path; augmented views differ from it
    from model_pkg.data import load_image
    from model_pkg.transforms import create_transform

    pixels = create_transform(model.data_config)(load_image(paths[1])).unsqueeze(0)
    with torch.no_grad():
        direct = model.backbone.forward_stem(pixels, 2)[0]
    assert torch.allclose(acts[1, 0].float(), direct, atol=2e-2)
    assert not torch.equal(acts[1, 1], acts[1, 0]) and not torch.equal(acts[1, 1], acts[1, 2])
    # rebuilt from the same seed (no cache file) -> the same views; the cache file is reused as it is
    again = compute_activation_views(model.backbone, paths, 2, views=3, image_size=32, seed=1)
    assert torch.equal(again, acts)
    assert torch.equal(compute_activation_views(model.backbone, paths, 2, views=3, image_size=32, seed=1, cache_file=cache), acts)
    with pytest.raises(ValueError, match="views=0"):
        compute_activation_views(model.backbone, paths, 2, views=0)


def test_activation_view_collator_draws_views_and_rejects_unknown_photos():
    acts = torch.arange(2 * 4, dtype=torch.float16).reshape(2, 4, 1, 1, 1).expand(2, 4, 2, 1, 1).contiguous()
    collator = ActivationViewCollator(acts, {"a": 0, "b": 1}, random_view=True, seed=0)
    seen = {float(collator([{"image_path": "b", "label": 1}])["activations"][0, 0, 0, 0]) for _ in range(40)}
    assert seen == {4.0, 5.0, 6.0, 7.0}  # every view of photo b, and only photo b's
    batch = ActivationViewCollator(acts, {"a": 0, "b": 1}, random_view=False)([{"image_path": "a", "identity": 3}])
    assert batch["activations"].shape == (1, 2, 1, 1) and float(batch["activations"].sum()) == 0.0
    assert batch["identity"].tolist() == [3]
    with pytest.raises(ValueError, match="not in the activation cache"):
        collator([{"image_path": "c", "label": 0}])


def test_cpu_recipe_runs_from_the_cached_activations(dog_tree, tmp_path):
    out = tmp_path / "run"
    summary = run_tiny(
        dog_tree,
        out,
        "--set",
        f"model={json.dumps({**TINY, 'activation_stage': 2})}",
        "--set",
        "frozen_steps=0",
        "--set",
        "finetune_steps=4",
        "--set",
        "head_init=pca",
        "--set",
        "activation_views=2",
        "--set",
        "eval_on_start=true",
    )
    caches = sorted(os.listdir(out / "activation_cache"))
    assert any(c.startswith("train-s2-32px-2v-") for c in caches) and any(c.startswith("val-s2-32px-") for c in caches)
    state = json.load(open(out / "checkpoints" / "checkpoint-4" / "trainer_state.json"))
    assert [e["step"] for e in state["log_history"] if "eval_recall_at_1" in e][:1] == [0]  # the baseline point
    assert 0 < summary["head_init"]["pca_explained_variance"] <= 1
    model = AutoModel.from_pretrained(out / "model")
    assert model.config.activation_stage == 2 and model.config.score_threshold is not None
    with pytest.raises(SystemExit, match="head_init"):
        run_tiny(dog_tree, tmp_path / "bad", "--set", "head_init=zeros")
