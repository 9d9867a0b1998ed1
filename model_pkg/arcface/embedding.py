"""Embedding photo files with an ArcFace embedder, in chunks so memory stays bounded.

`embed_paths` is how everything outside the model's forward embeds photos: training (validation
embeddings), the gallery evaluation, the pair matcher's s-norm cohort, the benchmarks. It goes through the
backbone's pooled features (`model_pkg.features.compute_pooled_features`: eval transform, float16 tokens), so
it runs on the CPU. `embed_pooled` embeds pooled features computed before, e.g. a training run's cache.
Importable from `model_pkg.arcface.training` too, where saved model cards point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..features import compute_pooled_features
from .modeling_arcface import ArcFaceEmbedderModel

__all__ = ["embed_paths", "embed_pooled"]


@torch.no_grad()
def embed_pooled(model: ArcFaceEmbedderModel, pooled: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Embeddings (N, E) float32 of pooled backbone features (N, D), in eval mode (the mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        out = [
            model.get_image_features(pooled_features=pooled[i : i + batch_size].float())
            for i in range(0, len(pooled), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out).float().numpy() if out else np.zeros((0, model.config.embedding_size), np.float32)


def embed_paths(model: ArcFaceEmbedderModel, paths: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Embeddings (N, E) float32 of photo files (eval transform, in chunks so memory stays bounded).

    Runs on the CPU, like `features.compute_tokens`: move a GPU model back with `model.cpu()` first."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"embed_paths runs on the CPU but the model is on {device}: call model.cpu() first.")
    return embed_pooled(model, compute_pooled_features(model.backbone, list(paths), batch_size=batch_size))
