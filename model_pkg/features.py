"""Backbone features of many photos at once, cached with `datasets.map` so a frozen backbone runs once.

Used by the frozen-backbone training phase (train on cached tokens, not pixels), by evaluation
(each photo is embedded once however many pairs it appears in) and by the hard-negative reference.
"""

from __future__ import annotations

import os
from typing import Sequence

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import Backbone
from .data import load_image
from .transforms import create_transform

__all__ = ["compute_tokens", "compute_pooled", "compute_layer_features"]


@torch.no_grad()
def compute_tokens(
    backbone: Backbone,
    image_paths: Sequence[str],
    batch_size: int = 32,
    cache_file: str | None = None,
    desc: str = "backbone tokens",
) -> torch.Tensor:
    """Run `backbone` (eval mode, eval transform) over `image_paths` -> float16 tokens (N, T, D).

    With `cache_file` (an .arrow path), results are stored there by `datasets` and reused when the
    same paths are asked for again, e.g. when a training run resumes.
    """
    transform = create_transform(backbone.data_config, train=False)
    was_training = backbone.training
    backbone.eval()
    t, d = backbone.num_tokens, backbone.token_dim

    def embed(batch):
        pixels = torch.stack([transform(load_image(p)) for p in batch["image_path"]])
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return {"tokens": backbone.forward_features(pixels).to(torch.float16).numpy()}

    table = datasets.Dataset.from_dict({"image_path": [str(p) for p in image_paths]})
    features = datasets.Features(
        {"image_path": datasets.Value("string"), "tokens": datasets.Array2D(shape=(t, d), dtype="float16")}
    )
    if cache_file:
        os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
    try:
        mapped = table.map(
            embed,
            batched=True,
            batch_size=batch_size,
            features=features,
            cache_file_name=cache_file,
            load_from_cache_file=cache_file is not None,
            desc=desc,
        )
    finally:
        backbone.train(was_training)
    return torch.from_numpy(np.asarray(mapped.with_format("numpy")["tokens"]))


@torch.no_grad()
def compute_pooled(backbone: Backbone, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Tokens (N, T, D) -> the backbone's pooled features (N, D) in float32."""
    out = [backbone.pool(tokens[i : i + batch_size].float()) for i in tqdm(range(0, len(tokens), batch_size), desc="pool", disable=True)]
    return torch.cat(out) if out else torch.zeros(0, backbone.token_dim)


@torch.no_grad()
def compute_layer_features(
    backbone: Backbone,
    image_paths: Sequence[str],
    layers: Sequence[str] = ("pooled",),
    batch_size: int = 8,
    desc: str = "layer features",
) -> dict[str, np.ndarray]:
    """Run `backbone` (eval mode, eval transform) over `image_paths` once -> {layer: float32 (N, C)},
    each layer global-average-pooled (`Backbone.forward_layers`: `pooled`, `tokens`, `stage<N>`)."""
    layers = list(layers)
    transform = create_transform(backbone.data_config, train=False)
    was_training = backbone.training
    backbone.eval()
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    try:
        for start in tqdm(range(0, len(image_paths), batch_size), desc=desc, mininterval=10):
            batch = image_paths[start : start + batch_size]
            pixels = torch.stack([transform(load_image(p)) for p in batch]).contiguous(memory_format=torch.channels_last)
            for name, feats in backbone.forward_layers(pixels, layers).items():
                chunks[name].append(feats.numpy().astype(np.float32))
    finally:
        backbone.train(was_training)
    return {name: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32) for name, parts in chunks.items()}
