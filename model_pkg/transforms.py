"""The one image-transform factory: PIL image -> normalised tensor, from a backbone's data config.

Evaluation resizes the whole photo to the model's size (no crop by default: our dog photos are
aligned faces, and timm's 0.875 centre crop would cut ears and chin). Training adds the conservative
augmentations used across the project: RandomResizedCrop(0.8-1.0), horizontal flip, rotation <= 15
degrees, a mild ColorJitter and, one time in five, a slight Gaussian blur (shelter and phone photos
are often soft); never a vertical flip (faces are upright).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torchvision import transforms as T

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["create_transform"]

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def create_transform(
    data_config: dict,
    train: bool = False,
    crop_pct: float = 1.0,
) -> Callable[[Image.Image], torch.Tensor]:
    """Build the train or eval transform.

    Args:
        data_config: timm-style dict with `input_size` (3, H, W), `mean`, `std`, `interpolation`
            (what `Backbone.data_config` and `timm.data.resolve_data_config` return).
        train: add augmentations.
        crop_pct: eval only; < 1 resizes the shorter side to size / crop_pct then centre-crops.
    """
    size = int(data_config["input_size"][-1])
    interpolation = _INTERPOLATION.get(data_config.get("interpolation", "bicubic"), T.InterpolationMode.BICUBIC)
    normalize = T.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"]))
    if train:
        steps = [
            T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=interpolation),
            T.RandomHorizontalFlip(),
            T.RandomRotation(15, interpolation=T.InterpolationMode.BILINEAR),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        ]
    elif crop_pct >= 1.0:
        steps = [T.Resize((size, size), interpolation=interpolation)]
    else:
        steps = [T.Resize(int(round(size / crop_pct)), interpolation=interpolation), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), normalize])
