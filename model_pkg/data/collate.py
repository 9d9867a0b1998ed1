"""Batch set pairs of different sizes into padded tensors plus masks of the real photos."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .images import load_image


def pad_sets(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-set tensors of shape (n_i, ...) into (B, max n_i, ...) padded with zeros.

    Returns the padded tensor and a (B, max n_i) bool mask, True for real entries.
    Works for photos (n_i, 3, H, W) as well as cached tokens (n_i, T, D).
    """
    if len(tensors) == 0:
        raise ValueError("pad_sets needs at least one set")
    trailing = tensors[0].shape[1:]
    dtype = tensors[0].dtype
    for i, t in enumerate(tensors):
        if t.dim() < 1 or t.shape[0] == 0:
            raise ValueError(f"set {i} is empty: every set needs at least one item")
        if t.shape[1:] != trailing:
            raise ValueError(
                f"set {i} has items of shape {tuple(t.shape[1:])} but set 0 has {tuple(trailing)}: "
                f"all items must share one shape (resize images to a fixed size in the transform)"
            )
        dtype = torch.promote_types(dtype, t.dtype)
    max_n = max(t.shape[0] for t in tensors)
    padded = torch.zeros((len(tensors), max_n, *trailing), dtype=dtype, device=tensors[0].device)
    mask = torch.zeros((len(tensors), max_n), dtype=torch.bool, device=tensors[0].device)
    for i, t in enumerate(tensors):
        padded[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return padded, mask


def _read_features(
    features: Sequence[Any], max_set_size: int | None
) -> tuple[list[list[str]], list[list[str]], torch.Tensor | None]:
    """Validate a batch and split it into side-A paths, side-B paths and labels (or None)."""
    if len(features) == 0:
        raise ValueError("cannot collate an empty batch")
    sides_a: list[list[str]] = []
    sides_b: list[list[str]] = []
    labels: list[float | None] = []
    for i, feature in enumerate(features):
        if dataclasses.is_dataclass(feature) and not isinstance(feature, type):
            feature = dataclasses.asdict(feature)  # accept SetPair objects directly
        if not isinstance(feature, Mapping):
            raise TypeError(f"example {i} must be a dict with 'paths_a' and 'paths_b', got {type(feature).__name__}")
        for side, key in (("A", "paths_a"), ("B", "paths_b")):
            if key not in feature:
                raise ValueError(f"example {i} has no '{key}': each example needs 'paths_a' and 'paths_b'")
            paths = feature[key]
            if isinstance(paths, (str, bytes)):
                raise TypeError(f"set {side} of example {i} is a single string: wrap it in a list, e.g. [{paths!r}]")
            paths = list(paths)
            if not paths:
                raise ValueError(f"set {side} of example {i} is empty: give at least one photo per side")
            if max_set_size is not None and len(paths) > max_set_size:
                raise ValueError(
                    f"set {side} of example {i} has {len(paths)} photos, more than max_set_size={max_set_size}: "
                    f"sample smaller sets or raise max_set_size"
                )
            (sides_a if side == "A" else sides_b).append(paths)
        label = feature.get("label")
        labels.append(None if label is None else float(label))
    given = [label is not None for label in labels]
    if all(given):
        return sides_a, sides_b, torch.tensor(labels, dtype=torch.float32)
    if any(given):
        missing = given.index(False)
        raise ValueError(f"example {missing} has no 'label' while others do: label all examples or none")
    return sides_a, sides_b, None


class SetPairCollator:
    """Load, transform and pad the photos of a batch of set pairs.

    ``transform`` maps an RGB PIL image to a (3, H, W) tensor of one fixed size.
    Returns ``pixel_values_a``/``pixel_values_b`` (B, N, 3, H, W) float,
    ``mask_a``/``mask_b`` (B, N) bool (True = real photo, padding is zeros) and
    ``labels`` (B,) float when the examples carry a ``label``. Sets larger than
    ``max_set_size`` (if given) are rejected rather than silently truncated.
    """

    def __init__(self, transform: Callable[[Any], torch.Tensor], max_set_size: int | None = None) -> None:
        if max_set_size is not None and max_set_size < 1:
            raise ValueError(f"max_set_size must be >= 1 or None, got {max_set_size}")
        self.transform = transform
        self.max_set_size = max_set_size

    def _side(self, sets: list[list[str]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        images: dict[str, Any] = {}
        stacked = []
        for i, paths in enumerate(sets):
            photos = []
            for path in paths:
                # A photo repeated within the batch is decoded once; the transform
                # still runs per use so random augmentations stay independent.
                if path not in images:
                    images[path] = load_image(path)
                pixels = self.transform(images[path])
                if not isinstance(pixels, torch.Tensor) or pixels.dim() != 3 or pixels.shape[0] != 3:
                    shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
                    raise ValueError(
                        f"transform returned {shape} for {path!r} (set {side} of example {i}); it must return a (3, H, W) tensor"
                    )
                photos.append(pixels)
            try:
                stacked.append(torch.stack(photos))
            except RuntimeError as exc:
                raise ValueError(
                    f"set {side} of example {i} has photos of different sizes after the transform: "
                    f"the transform must resize to one fixed size ({exc})"
                ) from exc
        padded, mask = pad_sets(stacked)
        if not padded.is_floating_point():
            padded = padded.float()
        return padded, mask

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        sides_a, sides_b, labels = _read_features(features, self.max_set_size)
        pixel_values_a, mask_a = self._side(sides_a, "A")
        pixel_values_b, mask_b = self._side(sides_b, "B")
        batch = {
            "pixel_values_a": pixel_values_a,
            "mask_a": mask_a,
            "pixel_values_b": pixel_values_b,
            "mask_b": mask_b,
        }
        if labels is not None:
            batch["labels"] = labels
        return batch


class CachedSetPairCollator:
    """Like :class:`SetPairCollator` but gathers precomputed backbone tokens instead of pixels.

    ``cache`` holds one row of tokens per image, shape (num_images, T, D), and
    ``index`` maps each image path to its row. Returns ``tokens_a``/``tokens_b``
    (B, N, T, D) float32, ``mask_a``/``mask_b`` and ``labels`` when given.
    """

    def __init__(self, cache: torch.Tensor, index: Mapping[str, int]) -> None:
        if not isinstance(cache, torch.Tensor) or cache.dim() < 2:
            raise ValueError("cache must be a tensor of shape (num_images, T, D) (or (num_images, D))")
        if index:
            top = max(index.values())
            if top >= cache.shape[0] or min(index.values()) < 0:
                raise ValueError(
                    f"index points at row {top} but the cache has {cache.shape[0]} rows: "
                    f"the index and cache come from different runs; rebuild them together"
                )
        self.cache = cache
        self.index = dict(index)

    def _side(self, sets: list[list[str]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        gathered = []
        for i, paths in enumerate(sets):
            rows = []
            for path in paths:
                row = self.index.get(path)
                if row is None:
                    raise ValueError(
                        f"image {path!r} (set {side} of example {i}) is not in the token cache "
                        f"({len(self.index)} images): rebuild the cache for this dataset, or check "
                        f"that paths are spelled exactly like the cache index keys (absolute paths)"
                    )
                rows.append(row)
            # Cast after gathering so a half-precision cache is only widened per batch.
            gathered.append(self.cache[torch.tensor(rows, dtype=torch.long)].float())
        return pad_sets(gathered)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        sides_a, sides_b, labels = _read_features(features, None)
        tokens_a, mask_a = self._side(sides_a, "A")
        tokens_b, mask_b = self._side(sides_b, "B")
        batch = {"tokens_a": tokens_a, "mask_a": mask_a, "tokens_b": tokens_b, "mask_b": mask_b}
        if labels is not None:
            batch["labels"] = labels
        return batch
