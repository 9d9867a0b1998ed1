"""ArcFace embedder: model, loss vs a naive reference, margin schedule, P x K sampler, training entry, gallery CLI.

Models are tiny (timm's `test_efficientnet`, 32 px, 16-d embeddings); the end-to-end run trains a few
steps on 12 real dogs copied into a temporary folder, and the gallery CLI evaluates that model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel, ArcFaceOutput
from model_pkg.arcface import training as arc_training
from model_pkg.arcface.training import MarginScheduleCallback, phase_cosine_schedule
from model_pkg.data.samplers import PKBatchSampler, split_gallery_queries
from model_pkg.losses import ArcFaceHead, arcface_margin_logits
from model_pkg.training_utils import resolve_mixed_precision

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "embedding_size": 16}


def tiny_model(seed: int = 0, **overrides) -> ArcFaceEmbedderModel:
    torch.manual_seed(seed)
    return ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**{**TINY, "num_classes": 5, **overrides}))


# -- model ---------------------------------------------------------------------------------------
def test_shapes_l2_norm_and_cached_features_path():
    model = tiny_model().eval()
    pixels = torch.randn(4, 3, 32, 32)
    out = model(pixel_values=pixels, labels=torch.tensor([0, 1, 2, 4]))
    assert isinstance(out, ArcFaceOutput)
    assert out.embeddings.shape == (4, 16) and out.logits.shape == (4, 5) and out.loss.ndim == 0
    assert torch.isfinite(out.loss)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)
    # logits are s * cos to the class centres, no margin
    assert out.logits.abs().max() <= model.config.scale + 1e-4
    pooled = model.pool_photos(pixels)  # the frozen phase's cached features give the same embeddings
    assert torch.allclose(model.get_image_features(pooled_features=pooled), out.embeddings, atol=1e-6)
    assert model(pixel_values=pixels).loss is None


def test_no_head_embeds_only_and_input_errors():
    model = ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**TINY)).eval()
    assert model.margin_head is None
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits is None
    with pytest.raises(ValueError, match="no margin head"):
        model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Give pixel_values"):
        model()
    with pytest.raises(ValueError, match="unsqueeze"):
        model(pixel_values=torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        tiny_model()(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 5]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"margin": 1.6}, "margin"),
        ({"scale": 0}, "scale"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": -1}, "num_classes"),
        ({"embedding_size": 0}, "embedding_size"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArcFaceEmbedderConfig(**kwargs)


@pytest.mark.parametrize("frozen", [True, False])
def test_gradient_reaches_every_trainable_parameter(frozen):
    model = tiny_model(freeze_backbone=frozen).train()
    out = model(pixel_values=torch.randn(6, 3, 32, 32), labels=torch.tensor([0, 0, 1, 1, 2, 2]))
    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("backbone.") for n, _ in trainable) != frozen
    for name, param in trainable:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name


def test_save_load_round_trip_via_auto_classes(tmp_path):
    model = tiny_model(score_threshold=0.42).eval()
    pixels = torch.randn(3, 3, 32, 32)
    expected = model(pixel_values=pixels)
    model.save_pretrained(tmp_path / "m")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "m"), ArcFaceEmbedderConfig)
    loaded = AutoModel.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is ArcFaceEmbedderModel and loaded.config.score_threshold == 0.42
    assert not loaded.config.backbone_pretrained  # the weights travel in the safetensors
    got = loaded(pixel_values=pixels)
    assert torch.allclose(got.embeddings, expected.embeddings, atol=1e-6)
    assert torch.allclose(got.logits, expected.logits, atol=1e-4)  # the margin head is saved too
    model.save_pretrained(tmp_path / "half", weights_dtype=torch.float16)
    half = AutoModel.from_pretrained(tmp_path / "half").eval()
    assert half.proj.weight.dtype == torch.float32
    assert torch.allclose(half(pixel_values=pixels).embeddings, expected.embeddings, atol=2e-2)


# -- loss ----------------------------------------------------------------------------------------
def naive_arcface_loss(cosines, labels, m, s, easy_margin=False) -> float:
    """Mean cross-entropy with the target angle theta = arccos(cos) widened by m, row by row."""
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    total = 0.0
    for row, y in zip(cosines, labels):
        logits = []
        for j, c in enumerate(row):
            if j == y:
                theta = math.acos(c)
                if easy_margin:
                    c = math.cos(theta + m) if c > 0 else c
                else:
                    c = math.cos(theta + m) if c > th else c - mm  # past pi - m: the linear fallback
            logits.append(s * c)
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_z - logits[y]
    return total / len(labels)


@pytest.mark.parametrize("margin, scale", [(0.0, 64.0), (0.3, 48.0), (0.5, 64.0)])
@pytest.mark.parametrize("easy_margin", [False, True])
def test_loss_matches_naive_arccos_reference(margin, scale, easy_margin):
    gen = torch.Generator().manual_seed(0)
    cos = torch.rand(12, 7, generator=gen, dtype=torch.float64) * 1.98 - 0.99
    cos[0, 3], cos[1, 2] = -0.97, -0.9  # targets beyond pi - m: the fallback branch
    labels = torch.tensor([3, 2, 0, 1, 4, 5, 6, 0, 1, 2, 3, 4])
    loss = F.cross_entropy(arcface_margin_logits(cos, labels, margin, scale, easy_margin), labels)
    expected = naive_arcface_loss(cos.tolist(), labels.tolist(), margin, scale, easy_margin)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_margin_only_lowers_target_logit_monotonically():
    m, s = 0.5, 64.0
    grid = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    cos = torch.stack([grid, torch.full_like(grid, 0.2)], dim=1)  # (N, 2), class 0 is the target
    logits = arcface_margin_logits(cos, torch.zeros(len(grid), dtype=torch.long), m, s)
    assert torch.equal(logits[:, 1], s * cos[:, 1])  # non-target logits untouched
    assert (logits[:, 0] <= s * grid + 1e-9).all()  # the margin only ever lowers the target logit
    assert (logits[1:, 0] >= logits[:-1, 0]).all()  # and it still falls as the angle grows, past pi - m too


def test_head_is_stable_at_cos_plus_minus_one_and_settable():
    head = ArcFaceHead(8, 3, margin=0.5, scale=64.0)
    centres = F.normalize(head.weight.detach(), dim=-1)
    embeddings = torch.stack([centres[0], -centres[1], centres[2]]).requires_grad_(True)  # cos = 1, -1, 1
    loss, logits = head(embeddings, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()
    assert logits.shape == (3, 3)
    head.margin, head.scale = 0.0, 30.0
    loss0, _ = head(embeddings, torch.tensor([0, 1, 2]))
    assert loss0.item() == pytest.approx(
        F.cross_entropy(30.0 * head.cosine(embeddings), torch.tensor([0, 1, 2])).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="margin"):
        head.margin = 2.0
    with pytest.raises(ValueError, match="scale"):
        head.scale = -1.0


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


# -- P x K sampler and the gallery split ------------------------------------------------------------
LABELS = [dog for dog, n in [("a", 5), ("b", 2), ("c", 4), ("d", 7), ("e", 3), ("f", 1), ("g", 4)] for _ in range(n)]


def test_pk_sampler_batches_p_identities_times_k():
    sampler = PKBatchSampler(LABELS, p=3, k=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7 // 3
    seen = set()
    for batch in batches:
        counts = Counter(LABELS[i] for i in batch)
        assert len(batch) == 9 and len(counts) == 3 and set(counts.values()) == {3}
        seen |= set(counts)
        for dog in counts:  # without replacement when the dog has >= k photos, all photos when fewer
            photos = [i for i in batch if LABELS[i] == dog]
            available = LABELS.count(dog)
            assert len(set(photos)) == min(3, available)
    assert len(seen) == 6  # each identity at most once per epoch
    assert len(PKBatchSampler(LABELS, p=3, k=3, drop_last=False)) == 3


def test_pk_sampler_is_deterministic_per_seed_and_epoch():
    def draw(seed, epoch):
        sampler = PKBatchSampler(LABELS, p=2, k=2, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw(0, 0) == draw(0, 0) and draw(3, 5) == draw(3, 5)
    assert draw(0, 0) != draw(0, 1) and draw(0, 0) != draw(1, 0)
    sampler = PKBatchSampler(LABELS, p=2, k=2, seed=0)
    sampler.set_epoch(1)
    list(sampler)
    assert list(sampler) == draw(0, 1)  # no hidden state carried between iterations


def test_pk_sampler_errors():
    with pytest.raises(ValueError, match="only 7 identities"):
        PKBatchSampler(LABELS, p=8, k=2)
    with pytest.raises(ValueError, match="k must be"):
        PKBatchSampler(LABELS, p=2, k=0)


def test_split_gallery_queries_protocol():
    groups = {f"d{i}": [f"d{i}/{j}.jpg" for j in range(n)] for i, n in enumerate([1, 2, 3, 4, 5, 6, 2, 3])}
    split = split_gallery_queries(groups, gallery_per_id=2, unknown_fraction=0.25, seed=0)
    assert split == split_gallery_queries(groups, gallery_per_id=2, unknown_fraction=0.25, seed=0)
    assert len(split.unknown_labels) == 2 and not set(split.unknown_labels) & set(split.gallery_labels)
    assert set(Counter(split.gallery_labels).values()) == {2}
    assert not set(split.gallery_paths) & set(split.query_paths)
    for dog in split.skipped_labels:
        assert len(groups[dog]) <= 2 and dog not in split.query_labels
    for dog in split.unknown_labels:
        assert split.query_labels.count(dog) == len(groups[dog])
    with pytest.raises(ValueError, match="larger than the photos available"):
        split_gallery_queries(groups, gallery_per_id=6, unknown_fraction=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_gallery_queries(groups, gallery_per_id=1, unknown_fraction=1.0)


# -- training entry and gallery evaluation on real photos -------------------------------------------
@pytest.fixture(scope="module")
def dog_tree(shared_data, tmp_path_factory):
    source = shared_data / "dogfacenet"
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
    paths = sorted(str(p) for p in (dog_tree / "0").glob("*.jpg"))[:3]
    emb = arc_training.embed_paths(model, paths)
    assert emb.shape == (3, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    transform = create_transform(model.data_config, train=False)
    with torch.no_grad():
        direct = model(pixel_values=torch.stack([transform(load_image(p)) for p in paths])).embeddings
    assert np.allclose(emb, direct.numpy(), atol=2e-2)  # the batched path caches float16 backbone tokens


# -- the CPU recipe: cached stem activations, PCA head init ------------------------------------------
def test_stem_split_reproduces_the_backbone_and_freezes_the_stem():
    model = tiny_model(activation_stage=2).eval()
    pixels = torch.randn(3, 3, 32, 32)
    acts = model.backbone.forward_stem(pixels, 2)
    assert torch.allclose(model.get_image_features(activations=acts), model.get_image_features(pixel_values=pixels), atol=1e-5)
    model.set_backbone_frozen(False)
    stem = {id(p) for p in model.backbone.stem_parameters(2)}
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    assert trainable and not any(id(p) in stem for p in trainable)
    assert all(not p.requires_grad for p in model.backbone.stem_parameters(2))
    model.train()
    model(activations=acts, labels=torch.tensor([0, 1, 2])).loss.backward()
    assert all(p.grad is not None for p in trainable)
    with pytest.raises(ValueError, match="activation_stage=9"):
        model.backbone.forward_stem(pixels, 9)
    with pytest.raises(ValueError, match="no activation_stage"):
        tiny_model().get_image_features(activations=acts)
    with pytest.raises(ValueError, match="activation_stage=0"):
        tiny_model(activation_stage=0)


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
    collator = arc_training.ActivationViewCollator(acts, {"a": 0, "b": 1}, random_view=True, seed=0)
    seen = {float(collator([{"image_path": "b", "label": 1}])["activations"][0, 0, 0, 0]) for _ in range(40)}
    assert seen == {4.0, 5.0, 6.0, 7.0}  # every view of photo b, and only photo b's
    batch = arc_training.ActivationViewCollator(acts, {"a": 0, "b": 1}, random_view=False)([{"image_path": "a", "identity": 3}])
    assert batch["activations"].shape == (1, 2, 1, 1) and float(batch["activations"].sum()) == 0.0
    assert batch["identity"].tolist() == [3]
    with pytest.raises(ValueError, match="not in the activation cache"):
        collator([{"image_path": "c", "label": 0}])


def test_pca_head_init_starts_at_the_cosine_baseline():
    torch.manual_seed(0)
    centres = torch.randn(5, 256) * 3  # the tiny backbone's pooled features are 256-d
    labels = torch.arange(5).repeat_interleave(8)
    pooled = (centres[labels] + torch.randn(40, 256)).relu()  # post-ReLU, like a CNN's pooled feature
    model = ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**{**TINY, "num_classes": 5, "dropout": 0.0})).eval()
    info = model.init_head_from_features(pooled, labels)
    assert 0.5 < info["pca_explained_variance"] <= 1.0
    emb = model.get_image_features(pooled_features=pooled)
    # the embedding is the centred PCA projection: its cosines agree with those of the centred features
    centred = F.normalize(pooled - pooled.mean(0), dim=-1)
    kept = centred @ centred.T
    assert torch.corrcoef(torch.stack([(emb @ emb.T).flatten(), kept.flatten()]))[0, 1] > 0.9
    # each class centre is its photos' mean direction: the head already classifies the training photos
    _, logits = model.margin_head(emb, None)
    assert (logits.argmax(-1) == labels).float().mean() > 0.9
    with pytest.raises(ValueError, match="PCA init needs"):
        model.init_head_from_features(pooled[:3], labels[:3])
    with pytest.raises(ValueError, match="pooled features of 255 dims"):
        model.init_head_from_features(pooled[:, :255], labels)


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


def test_flip_tta_makes_embeddings_mirror_invariant_and_survives_save_load(tmp_path):
    """`tta_flip`: at inference a photo and its mirror image get the same embedding (each is the mean of
    both views); training with gradients sees the single view; the setting is saved with the model and
    reaches the pair matcher built from the embedder."""
    from model_pkg import PairMatcherModel

    model = tiny_model(tta_flip=True).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        emb, mirrored = model.get_image_features(pixel_values=x), model.get_image_features(pixel_values=x.flip(-1))
        model.set_tta_flip(False)
        plain, plain_mirrored = model.get_image_features(pixel_values=x), model.get_image_features(pixel_values=x.flip(-1))
        model.set_tta_flip(True)
    torch.testing.assert_close(emb, mirrored, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, plain_mirrored, atol=1e-3)  # the plain model is not mirror-invariant
    assert not torch.allclose(emb, plain, atol=1e-3)
    tokens_with_grad = model.backbone.forward_features(x)  # gradients on: one view, as in training
    torch.testing.assert_close(tokens_with_grad, model.backbone._tokens(model.backbone.model.forward_features(x)))

    model.save_pretrained(tmp_path / "m")
    loaded = ArcFaceEmbedderModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.tta_flip and loaded.backbone.tta_flip
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_image_features(pixel_values=x), emb, atol=1e-5, rtol=1e-5)
    matcher = PairMatcherModel.from_embedder(loaded)
    assert matcher.config.tta_flip and matcher.backbone.tta_flip
