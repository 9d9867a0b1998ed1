"""The tiny pair matcher that tests/pair_matcher/test_pair_matcher.py and tests/pair_matcher/test_pair_matcher_weights.py build: timm's
`test_efficientnet` backbone at 64 px (a 2x2 feature map, so 4 tokens per photo), hidden size 32, plus random
photo batches. `tiny_model` scales up the freshly initialised head weights (std 0.02 makes every logit nearly
the same constant), so a test can see the logits move when a real photo changes.
"""

from __future__ import annotations

import torch

from model_pkg import PairMatcherConfig, PairMatcherModel, PairMatcherOutput

IMAGE_SIZE = 64  # test_efficientnet: a 2x2 feature map, so 4 tokens per photo
HIDDEN = 32
ATOL = 1e-5
RTOL = 1e-4


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
