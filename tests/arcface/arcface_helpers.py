"""The tiny ArcFace embedder that tests/arcface/test_arcface.py and tests/arcface/test_arcface_training.py build: timm's
`test_efficientnet` backbone, 32 px photos, 16-d embeddings, so a model runs in milliseconds on a CPU."""

from __future__ import annotations

import torch

from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel

TINY = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "embedding_size": 16}


def tiny_model(seed: int = 0, **overrides) -> ArcFaceEmbedderModel:
    """A seeded tiny embedder with a 5-class margin head; `overrides` are ArcFaceEmbedderConfig keywords."""
    torch.manual_seed(seed)
    return ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**{**TINY, "num_classes": 5, **overrides}))
