"""The Hugging Face contract every model family keeps, run over all three as transformers' `ModelTesterMixin` does.

Each family gives a tiny config (timm's `test_efficientnet`, 32-64 px, a few hidden units) and its inputs; the same
checks then run on each: the config's dict and JSON round trip, `save_pretrained` / `from_pretrained` (also through
`AutoConfig` / `AutoModel`, offline, and with fp16 weights) giving the same outputs, a `ModelOutput` whose first item is
the loss when labels are given (`output[0]`, what `Trainer` reads) and absent otherwise, and, for families that take
masks, padded slots that change nothing. Family-specific behaviour stays in the family's own test file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch
from tests.dual_encoder.test_dual_encoder import TINY_BERT
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import (
    ArcFaceEmbedderConfig,
    ArcFaceEmbedderModel,
    ArcFaceOutput,
    PairMatcherConfig,
    PairMatcherModel,
    PairMatcherOutput,
)
from model_pkg.dual_encoder import DualEncoderConfig, DualEncoderModel, build_vocab
from model_pkg.dual_encoder.modeling_dual_encoder import DualEncoderOutput

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CAPTIONS = ["a black dog runs on the beach", "two children play in the park", "a man rides a red bike"]


@dataclass
class Family:
    """One model family: how to build a tiny config, its inputs, and what its outputs are called."""

    name: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    output_class: type[ModelOutput]
    model_type: str
    config_kwargs: dict[str, Any]
    inputs: Any  # model -> dict of inputs (without labels)
    labels: Any  # model -> dict of the inputs that ask for the loss
    compared: tuple[str, ...]  # output fields that must survive save/load; the first is `output[0]` without labels
    masks: tuple[str, ...] = field(default_factory=tuple)  # (mask name, pixel name) pairs when the family takes masks


def _pair_inputs(model) -> dict:
    g = torch.Generator().manual_seed(0)
    size = model.config.image_size
    return dict(
        pixel_values_a=torch.randn(2, 3, 3, size, size, generator=g),
        mask_a=torch.tensor([[True, True, False], [True, True, True]]),
        pixel_values_b=torch.randn(2, 2, 3, size, size, generator=g),
        mask_b=torch.tensor([[True, False], [True, True]]),
    )


def _arcface_inputs(model) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(pixel_values=torch.randn(3, 3, model.config.image_size, model.config.image_size, generator=g))


def _dual_inputs(model) -> dict:
    g = torch.Generator().manual_seed(0)
    size = model.config.vision_config.image_size
    return dict(**model.tokenize(CAPTIONS), pixel_values=torch.randn(len(CAPTIONS), 3, size, size, generator=g))


FAMILIES = [
    Family(
        name="pair_matcher",
        config_class=PairMatcherConfig,
        model_class=PairMatcherModel,
        output_class=PairMatcherOutput,
        model_type="petmatch_pair_matcher",
        config_kwargs=dict(
            backbone="test_efficientnet",
            backbone_pretrained=False,
            image_size=64,
            hidden_size=32,
            num_attention_heads=4,
            mlp_hidden_size=32,
            threshold=0.7,
        ),
        inputs=_pair_inputs,
        labels=lambda model: {"labels": torch.tensor([1.0, 0.0])},
        compared=("logits", "embeds_a", "embeds_b"),
        masks=(("mask_a", "pixel_values_a"), ("mask_b", "pixel_values_b")),
    ),
    Family(
        name="arcface_embedder",
        config_class=ArcFaceEmbedderConfig,
        model_class=ArcFaceEmbedderModel,
        output_class=ArcFaceOutput,
        model_type="petmatch_arcface_embedder",
        config_kwargs=dict(
            backbone="test_efficientnet",
            backbone_pretrained=False,
            image_size=32,
            embedding_size=16,
            num_classes=5,
            score_threshold=0.42,
        ),
        inputs=_arcface_inputs,
        labels=lambda model: {"labels": torch.tensor([0, 3, 4])},
        compared=("embeddings", "logits"),
    ),
    Family(
        name="dual_encoder",
        config_class=DualEncoderConfig,
        model_class=DualEncoderModel,
        output_class=DualEncoderOutput,
        model_type="petmatch_dual_encoder",
        config_kwargs=dict(
            vision_config={"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "freeze": False},
            text_config={"tower": "lstm", "vocab": build_vocab(CAPTIONS, min_freq=1), "embedding_dim": 16, "hidden_size": 16},
            projection_dim=16,
        ),
        inputs=_dual_inputs,
        labels=lambda model: {"return_loss": True},
        compared=("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"),
    ),
]


DUAL = FAMILIES[-1]
FAMILIES.append(  # the shipped text tower's kind: a transformers encoder (a 2-layer, 32-wide BERT) with MiniLM's tokenizer
    replace(
        DUAL,
        name="dual_encoder_transformers_text",
        config_kwargs={
            **DUAL.config_kwargs,
            "text_config": {"tower": "transformers", "pretrained": False, "hf_config": TINY_BERT, "max_length": 16},
        },
    )
)


@pytest.fixture(params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request) -> Family:
    return request.param


def tiny(family: Family, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    return family.model_class(family.config_class(**family.config_kwargs)).eval()


def outputs(model, inputs: dict) -> ModelOutput:
    with torch.no_grad():
        return model(**inputs)


def settings(config: PretrainedConfig | dict, saved: bool = False) -> dict:
    """A config's settings, nested configs included, without where it was loaded from and the dtype transformers
    fills in on loading. `saved`: as a saved model's config reads them: a `*pretrained` flag is False there, since the
    weights travel in model.safetensors (loading must never fetch them again)."""
    items = config.to_dict() if isinstance(config, PretrainedConfig) else config
    out = {}
    for key, value in items.items():
        if key in ("_name_or_path", "dtype"):
            continue
        if isinstance(value, dict):
            value = settings(value, saved)
        elif saved and str(key).endswith("pretrained") and isinstance(value, bool):
            value = False
        out[key] = value
    return out


def same_config(a: PretrainedConfig, b: PretrainedConfig) -> bool:
    return settings(a) == settings(b)


def assert_same_outputs(family: Family, got: ModelOutput, expected: ModelOutput, atol: float) -> None:
    for name in family.compared:
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=atol, rtol=atol, msg=name)


def test_config_round_trips_through_dict_and_json(family, tmp_path):
    config = family.config_class(**family.config_kwargs)
    assert config.model_type == family.model_type
    again = family.config_class.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is family.config_class and same_config(loaded, config)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family.model_type


def test_save_and_load_give_the_same_outputs_through_the_auto_classes(family, tmp_path, hub_offline):
    model = tiny(family)
    inputs = family.inputs(model)
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file() and not list((tmp_path / "m").glob("*.bin"))
    for loaded in (family.model_class.from_pretrained(tmp_path / "m"), AutoModel.from_pretrained(tmp_path / "m")):
        assert type(loaded) is family.model_class and not loaded.training  # from_pretrained gives eval mode
        assert settings(loaded.config) == settings(model.config, saved=True)
        state, loaded_state = model.state_dict(), loaded.state_dict()
        assert set(state) == set(loaded_state) and all(torch.equal(state[k], loaded_state[k]) for k in state)
        assert_same_outputs(family, outputs(loaded, inputs), expected, atol=1e-5)
    # half-size weights on disk, float32 once loaded, the same outputs up to fp16 rounding
    model.save_pretrained(tmp_path / "half", weights_dtype=torch.float16)
    half = AutoModel.from_pretrained(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in half.parameters())
    assert_same_outputs(family, outputs(half, inputs), expected, atol=3e-2)


def test_model_output_has_the_loss_first_when_labels_are_given(family):
    model = tiny(family).train()
    inputs = family.inputs(model)
    out = model(**inputs, **family.labels(model))
    assert isinstance(out, family.output_class) and isinstance(out, ModelOutput)
    assert next(iter(out.keys())) == "loss" and out[0] is out.loss and out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    plain = outputs(model.eval(), inputs)
    assert plain.loss is None and "loss" not in plain.keys()
    assert all(getattr(plain, name) is not None for name in family.compared)
    assert isinstance(plain.to_tuple(), tuple) and plain[0] is getattr(plain, family.compared[0])


MASKED = [f for f in FAMILIES if f.masks]  # the families whose inputs are padded sets with masks


@pytest.mark.parametrize("family", MASKED, ids=[f.name for f in MASKED])
def test_padded_slots_change_nothing(family):
    model = tiny(family)
    inputs = family.inputs(model)
    expected = outputs(model, inputs)
    changed = dict(inputs)
    for mask_name, pixel_name in family.masks:
        pixels = inputs[pixel_name].clone()
        pixels[~inputs[mask_name]] = torch.randn_like(pixels[~inputs[mask_name]]) * 10  # garbage in the padding
        changed[pixel_name] = pixels
    assert_same_outputs(family, outputs(model, changed), expected, atol=1e-5)
