"""Photos -> vectors, one loop: loading each photo, batching, the failure policy and progress, written once.

    loader = PixelLoader(create_transform(model.backbone.data_config, train=False))
    out = embed_batches(paths, lambda pixels: model.get_image_features(torch.stack(pixels)).numpy(), load=loader,
                        batch_size=32, on_error="skip", progress=lambda done, total: ..., dim=512)
    out.vectors, out.kept, out.skipped   # (K, D) of the readable photos, their indices, [(index, reason)]

Every caller that turns photos into vectors goes through here: the intake's `embed_photos` (the gallery, the gallery
store, set vs set, the evaluation, the app), bulk embedding (`model_pkg.embed`), text search's `embed_images`, and,
for whole sets loaded at once, `load_photos` (`match_sets` without a fusion, the ONNX exporter's photos, the backbone
tokens behind `arcface.embedding.embed_paths`). Each passes its own model call (`embed`): the loop never decides
which vectors a photo gets, only how photos reach the model and what a bad one does.

The failure policy (`on_error`): "raise" lets a bad photo's `ImageLoadError` through, whose message names the photo,
says what was wrong and what to do; "skip" leaves it out and reports it (`skipped`: its index and that message, for
an `ImageLoadError` or an `OSError`) so the caller can list or log it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .data.images import ImageLoadError, load_image

__all__ = ["EmbeddedPhotos", "OnError", "PixelLoader", "check_photos", "embed_batches", "load_photos"]

OnError = Literal["raise", "skip"]
ProgressFn = Callable[[int, int], None]
LoadFn = Callable[[Any], Any]
# What "skip" leaves out: a photo that cannot be read. Anything else (a bug, a model error) always raises.
SKIPPED_ERRORS = (ImageLoadError, OSError)


class PixelLoader:
    """A photo -> its model input: `transform(load_image(photo, max_side))`. A class, not a closure, so that
    DataLoader workers started by spawning can take it along."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], max_side: int = 2048):
        self.transform = transform
        self.max_side = max_side

    def __call__(self, photo) -> torch.Tensor:
        return self.transform(load_image(photo, max_side=self.max_side))


@dataclass
class EmbeddedPhotos:
    """vectors: (K, D) the model call's rows of the photos kept, in order; kept: their indices among the photos;
    skipped: (index, reason) of each photo left out under on_error="skip"."""

    vectors: np.ndarray
    kept: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _check_policy(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')


class _Photos(torch.utils.data.Dataset):
    """Photo i -> (i, what `load` made of it or None, why it was skipped or None), under the failure policy."""

    def __init__(self, photos: Sequence, load: LoadFn | None, on_error: OnError):
        self.photos = photos
        self.load = load
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        if self.load is None:
            return i, self.photos[i], None
        if self.on_error == "raise":
            return i, self.load(self.photos[i]), None
        try:
            return i, self.load(self.photos[i]), None
        except SKIPPED_ERRORS as err:
            return i, None, str(err)


def _as_list(items: list) -> list:
    return items


def embed_batches(
    photos: Sequence,
    embed: Callable[[list], np.ndarray],
    *,
    load: LoadFn | None = load_image,
    batch_size: int = 32,
    on_error: OnError = "raise",
    progress: ProgressFn | None = None,
    num_workers: int = 0,
    dim: int = 0,
) -> EmbeddedPhotos:
    """`photos` in windows of `batch_size`: each photo through `load` (None: the photos are loaded already), the
    window's loaded ones through `embed` (a list -> (B, D) rows; not called for a window of skipped photos only),
    then `progress(done, total)`. `num_workers` > 0 loads in that many DataLoader worker processes. `dim`: the
    width of `vectors` when no photo was embedded."""
    _check_policy(on_error)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = torch.utils.data.DataLoader(
        _Photos(photos, load, on_error), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
    )
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    done = 0
    for batch in batches:
        skipped.extend((i, reason) for i, _, reason in batch if reason is not None)
        ok = [(i, item) for i, item, reason in batch if reason is None]
        if ok:
            chunks.append(embed([item for _, item in ok]))
            kept.extend(i for i, _ in ok)
        done += len(batch)
        if progress is not None:
            progress(done, len(photos))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return EmbeddedPhotos(vectors, kept, skipped)


def load_photos(photos: Sequence, load: LoadFn = load_image, on_error: OnError = "raise") -> tuple[list, list[tuple[int, str]]]:
    """Every photo through `load`, in one go (a set compared at once, the photos an exporter checks with) ->
    (what was loaded, [(index, reason)] skipped); under "raise" the first bad photo raises its `ImageLoadError`."""
    _check_policy(on_error)
    loaded, skipped = [], []
    dataset = _Photos(photos, load, on_error)
    for i, item, reason in (dataset[i] for i in range(len(dataset))):
        if reason is None:
            loaded.append(item)
        else:
            skipped.append((i, reason))
    return loaded, skipped


def check_photos(photos: Sequence, load: LoadFn = load_image) -> None:
    """The first photo that cannot be loaded raises its `ImageLoadError` (naming it); nothing is kept: the check
    before a photo is stored."""
    for photo in photos:
        load(photo)
