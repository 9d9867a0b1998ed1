"""`import model_pkg` is lazy (no torch, no transformers) and our models still load through `AutoModel`.

Each check runs in a fresh interpreter: in this one, model_pkg and transformers are long imported."""

from __future__ import annotations

import pytest
import torch
from tests.fresh_interpreter import run_fresh

import model_pkg
from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel, PairMatcherConfig, PairMatcherModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pair matcher and a tiny ArcFace embedder saved with save_pretrained."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    tiny = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32}
    PairMatcherModel(PairMatcherConfig(**tiny, hidden_size=32, num_attention_heads=4, mlp_hidden_size=32)).save_pretrained(
        root / "pair"
    )
    ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**tiny, embedding_size=16, num_classes=0)).save_pretrained(root / "embedder")
    return root


def test_import_is_lazy_and_auto_model_still_loads_our_models(saved):
    """The model cards' usage: `import model_pkg`, then transformers' AutoModel on a saved folder."""
    out = run_fresh(f"""
        import json, sys
        import model_pkg
        light = not any(m in sys.modules for m in ("torch", "transformers", "timm", "model_pkg.pair_matcher"))
        from transformers import AutoConfig, AutoModel
        pair = AutoModel.from_pretrained({str(saved / "pair")!r})
        embedder = AutoModel.from_pretrained({str(saved / "embedder")!r})
        from model_pkg import PairMatcherModel
        print(json.dumps({{
            "light": light,
            "pair": type(pair).__name__,
            "embedder": type(embedder).__name__,
            "same_class": type(pair) is PairMatcherModel,
            "config": type(AutoConfig.from_pretrained({str(saved / "pair")!r})).__name__,
        }}))
    """)
    assert out == {
        "light": True,
        "pair": "PairMatcherModel",
        "embedder": "ArcFaceEmbedderModel",
        "same_class": True,
        "config": "PairMatcherConfig",
    }


def test_names_import_on_use_and_register_whatever_the_import_order(saved):
    """...and inference (loading, `match_sets`, the gallery) leaves `datasets` out: it cost the app's cold start."""
    out = run_fresh(f"""
        import json, sys
        from transformers import AutoModel   # transformers first: `import model_pkg` registers at once
        import model_pkg
        first = type(AutoModel.from_pretrained({str(saved / "embedder")!r})).__name__
        from model_pkg import DualEncoderConfig, MiniVec2VecConfig, PairMatcherOutput
        from model_pkg.pair_matcher.pipeline import match_sets
        from model_pkg.gallery_store import PhotoGallery
        from model_pkg.training import save_with_model_card
        print(json.dumps({{
            "first": first,
            "dual": DualEncoderConfig.model_type,
            "aligner": MiniVec2VecConfig.model_type,
            "datasets": "datasets" in sys.modules,
        }}))
    """)
    assert out == {
        "first": "ArcFaceEmbedderModel",
        "dual": "petmatch_dual_encoder",
        "aligner": "petmatch_mini_vec2vec",
        "datasets": False,
    }


def test_public_names_and_errors():
    assert set(model_pkg.__all__) == set(model_pkg._EXPORTS) | {"register_auto_classes"}
    assert set(model_pkg.__all__) <= set(dir(model_pkg))
    for name in model_pkg._EXPORTS:
        assert getattr(model_pkg, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'PairMatcher'"):
        model_pkg.PairMatcher  # noqa: B018
    from transformers import AutoConfig

    model_pkg.register_auto_classes()  # idempotent
    assert AutoConfig.for_model(PairMatcherConfig.model_type).__class__ is PairMatcherConfig
