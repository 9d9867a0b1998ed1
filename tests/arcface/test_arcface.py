"""ArcFace embedder: model, loss vs a naive reference, P x K sampler, the gallery split, the CPU recipe's stem
split and PCA head init, flip TTA.

Models are tiny (timm's `test_efficientnet`, 32 px, 16-d embeddings). Training the embedder (schedules,
the training entry on real photos, the gallery CLI, the cached activations) is `test_arcface_training.py`.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel, ArcFaceOutput
from model_pkg.data.samplers import PKBatchSampler, split_gallery_queries
from model_pkg.losses import ArcFaceHead, arcface_margin_logits
from tests.arcface.arcface_helpers import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")


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


def test_pk_sampler_kind_balanced_groups():
    # 6 face dogs and 3 whole-body dogs: every batch holds 2 of each, the small group cycling faster
    labels = [f"face-{i}" for i in range(6) for _ in range(3)] + [f"body-{i}" for i in range(3) for _ in range(4)]
    sampler = PKBatchSampler(labels, p=4, k=2, seed=0, group_p={"face": 2, "body": 2}, group_of=lambda name: name.split("-")[0])
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3  # as long as the larger group needs: 6 face dogs, 2 per batch
    seen = Counter()
    for batch in batches:
        dogs = Counter(labels[i] for i in batch)
        assert len(dogs) == 4 and set(dogs.values()) == {2}  # 4 distinct identities x k photos
        assert Counter(d.split("-")[0] for d in dogs) == {"face": 2, "body": 2}
        seen.update(dogs)
    assert {d for d in seen if d.startswith("face")} == {f"face-{i}" for i in range(6)}  # every face dog once an epoch
    assert sum(n for d, n in seen.items() if d.startswith("body")) == 2 * 3 * 2  # body dogs twice as often
    again = PKBatchSampler(labels, p=4, k=2, seed=0, group_p={"face": 2, "body": 2}, group_of=lambda name: name.split("-")[0])
    assert list(again) == batches
    with pytest.raises(ValueError, match="must sum to p=4"):
        PKBatchSampler(labels, p=4, k=2, group_p={"face": 3, "body": 2}, group_of=lambda name: name.split("-")[0])
    with pytest.raises(ValueError, match="which group_p"):
        PKBatchSampler(labels, p=4, k=2, group_p={"face": 4}, group_of=lambda name: name.split("-")[0])
    with pytest.raises(ValueError, match="group 'body': 4 identities per batch from its 3"):
        PKBatchSampler(labels, p=6, k=2, group_p={"face": 2, "body": 4}, group_of=lambda name: name.split("-")[0])


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


# -- the CPU recipe's model: stem split, PCA head init ---------------------------------------------------
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


# -- flip TTA --------------------------------------------------------------------------------------
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
