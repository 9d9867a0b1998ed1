"""`PairMatcherModel`: shapes, gradients, set invariances, input errors, cached tokens, config checks.

Every model here is tiny (timm's `test_efficientnet`, 64 px, hidden size 32: tests/pair_matcher/pair_matcher_helpers.py)
so the whole file runs in seconds on a CPU. Invariance tests first scale up the freshly initialised head
weights (std 0.02 makes every logit nearly the same constant) and check the logits *do* move when a real
photo changes, so an invariance that holds only because the output ignores its input cannot pass.
Save/load, freezing and `predict_proba` are tests/pair_matcher/test_pair_matcher_weights.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import PairMatcherOutput
from model_pkg.losses import pair_bce_loss
from model_pkg.pair_matcher.configuration_pair_matcher import HEADS, SET_POOLINGS
from tests.pair_matcher.pair_matcher_helpers import ATOL, HIDDEN, RTOL, batch, combo_model, photos, run, tiny_config, tiny_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

HEAD_VARIANTS = [("concat_mlp", "cosine"), ("cross_attention", "cosine"), ("siamese", "cosine"), ("siamese", "learned")]
COMBOS = [(pooling, head, distance) for pooling in SET_POOLINGS for head, distance in HEAD_VARIANTS]
COMBO_IDS = [f"{p}-{h}" + (f"-{d}" if h == "siamese" else "") for p, h, d in COMBOS]


def test_combos_cover_every_option():
    assert {p for p, _, _ in COMBOS} == set(SET_POOLINGS)
    assert {h for _, h, _ in COMBOS} == set(HEADS)


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
