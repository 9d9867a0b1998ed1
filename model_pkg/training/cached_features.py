"""Training an embedder on what a frozen backbone computed once: pooled features, stem-activation views.

While the backbone is frozen, its output for a photo never changes, so it is computed once, written to
disk and read back on resume: the pooled features (N, D) of every photo (`pooled_features`), and for the
CPU recipe (`activation_stage`) V augmented views of the frozen stem's activations per training photo
(`activation_view_collators`). The collators turn rows with `image_path` (plus `label` and/or `identity`)
into batches of those cached tensors; `PhotoCollator` is the same for pixels, once the backbone trains.
Cache files are keyed by the backbone's weights and the photos' paths, sizes and times
(`backbone_cache_key`), so a fine-tuned backbone or changed photos never reuse a stale cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import load_image
from ..features import compute_activation_views, compute_pooled_features
from ..fileio import atomic_save_npy, update_with_weights
from .distributed import log_cache, main_process_first

logger = logging.getLogger(__name__)

__all__ = [
    "ActivationViewCollator",
    "PhotoCollator",
    "PooledFeatureCollator",
    "activation_view_collators",
    "backbone_cache_key",
    "pooled_features",
]


def _targets(rows: Sequence[dict]) -> dict[str, torch.Tensor]:
    """`labels` (training identity indices) and/or `identity` (val identity indices) when every row has them."""
    out = {}
    for key, name in (("label", "labels"), ("identity", "identity")):
        if rows and all(key in r for r in rows):
            out[name] = torch.tensor([int(r[key]) for r in rows], dtype=torch.long)
    return out


class PooledFeatureCollator:
    """Rows with `image_path` -> `pooled_features` (B, D) float32 gathered from a cache (N, D) + targets."""

    def __init__(self, features: torch.Tensor, index: dict[str, int]):
        self.features = features
        self.index = index

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        try:
            rows_idx = [self.index[r["image_path"]] for r in rows]
        except KeyError as err:
            raise ValueError(
                f"photo {err.args[0]!r} is not in the pooled-feature cache: rebuild the cache for this data."
            ) from None
        return {"pooled_features": self.features[rows_idx].float(), **_targets(rows)}


class ActivationViewCollator:
    """Rows with `image_path` -> `activations` (B, C, h, w) float32 from a cache of views (N, V, C, h, w) + targets.

    Training draws one of the V cached views of each photo at random (`random_view=True`): V views of
    crops, flips, colour and blur, computed once, stand in for fresh augmentation every epoch.
    Evaluation reads view 0, the un-augmented photo. `process_index` (of several training processes) gives
    each process views of its own; process 0 draws exactly what a single process would."""

    def __init__(
        self,
        activations: torch.Tensor,
        index: dict[str, int],
        random_view: bool = True,
        seed: int = 0,
        process_index: int = 0,
    ):
        self.activations = activations
        self.index = index
        self.random_view = random_view
        self.rng = np.random.default_rng(seed if process_index == 0 else [seed, process_index])

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        try:
            rows_idx = torch.tensor([self.index[r["image_path"]] for r in rows])
        except KeyError as err:
            raise ValueError(f"photo {err.args[0]!r} is not in the activation cache: rebuild the cache for this data.") from None
        views = self.activations.shape[1]
        view = (
            torch.from_numpy(self.rng.integers(0, views, len(rows)))
            if self.random_view
            else torch.zeros(len(rows), dtype=torch.long)
        )
        x = self.activations[rows_idx, view].float().contiguous(memory_format=torch.channels_last)
        return {"activations": x, **_targets(rows)}


class PhotoCollator:
    """Rows with `image_path` -> `pixel_values` (B, 3, H, W) through `transform` + targets."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([self.transform(load_image(r["image_path"])) for r in rows])
        return {"pixel_values": pixels, **_targets(rows)}


def backbone_cache_key(backbone, paths: Sequence[str]) -> str:
    """A short hash of the backbone (name, size, flip TTA, weights) and of the photos' paths, sizes and times."""
    flip = ":flip" if getattr(backbone, "tta_flip", False) else ""  # flip-TTA features differ from single-view ones
    digest = hashlib.sha256(f"{backbone.model_name}:{backbone.image_size}{flip}\n".encode())
    update_with_weights(digest, backbone.state_dict())  # the weights, so fine-tuned backbones never share a cache
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\t{st.st_mtime_ns}\t{st.st_size}\n".encode())
    return digest.hexdigest()[:24]


def pooled_features(backbone, paths: Sequence[str], cache_dir: str | None = None, batch_size: int = 32) -> torch.Tensor:
    """The backbone's pooled features (N, D) float32 of `paths` (`features.compute_pooled_features`). With `cache_dir` they are stored once as an .npy keyed by the backbone's
    weights and the photos' paths, sizes and times, written atomically, and reused (e.g. on resume)."""
    file = None
    if cache_dir:
        file = Path(cache_dir) / f"pooled-{backbone.model_name}-{backbone.image_size}-{backbone_cache_key(backbone, paths)}.npy"
        log_cache("pooled-feature", file)
        if file.is_file():
            try:
                array = np.load(file)
                if array.shape[0] == len(paths):
                    return torch.from_numpy(array)
            except (OSError, ValueError) as err:
                logger.warning("ignoring unreadable feature cache %s (%s)", file, err)
    features = compute_pooled_features(backbone, paths, batch_size=batch_size)
    if file is not None:
        atomic_save_npy(file, features.numpy())
    return features


def activation_view_collators(
    backbone,
    train_paths: Sequence[str],
    val_paths: Sequence[str],
    stage: int,
    views: int,
    train_size: int,
    val_size: int,
    cache_dir: str,
    seed: int = 0,
    process_index: int = 0,
) -> tuple[ActivationViewCollator, ActivationViewCollator]:
    """The CPU recipe's training and evaluation collators: the frozen stem (up to `stage`) runs once per view,
    `views` augmented views of each training photo at `train_size`, the un-augmented validation photos at
    `val_size`, each cached as an .arrow file under `cache_dir` (built by the main process of each machine,
    read by the others); training then reads the cached activations."""
    key = backbone_cache_key(backbone, train_paths)
    train_file = os.path.join(cache_dir, f"train-s{stage}-{train_size}px-{views}v-{key}.arrow")
    val_file = os.path.join(cache_dir, f"val-s{stage}-{val_size}px-{backbone_cache_key(backbone, val_paths)}.arrow")
    with main_process_first("stem activations"):  # built once, then read by the other processes
        log_cache("training-view activation", train_file)
        train_act = compute_activation_views(
            backbone,
            train_paths,
            stage,
            views,
            train_size,
            seed=seed,
            cache_file=train_file,
            desc="training views (frozen stem)",
        )
        log_cache("validation activation", val_file)
        val_act = compute_activation_views(
            backbone, val_paths, stage, 1, val_size, cache_file=val_file, desc="validation photos (frozen stem)"
        )
    train_collator = ActivationViewCollator(train_act, {p: i for i, p in enumerate(train_paths)}, True, seed, process_index)
    eval_collator = ActivationViewCollator(val_act, {p: i for i, p in enumerate(val_paths)}, False)
    return train_collator, eval_collator
