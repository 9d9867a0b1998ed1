"""Photos -> intake -> vectors: the one path a photo takes to a model whose config carries an intake and a fusion.

    vectors = embed_photos(model, ["found/1.jpg", "found/2.jpg"])
    vectors.intake[0].crop, vectors.intake[0].reshoot    # what the intake saw
    vectors.fused                                        # (N, E + 1280): set-vs-set cosines
    vectors.gallery                                      # (N, E + 1280 + 2): the gallery's vectors (species block)

`model` is an `ArcFaceEmbedderModel` or a `PairMatcherModel` built from one: both give the trained identity
embedding of a crop through `photo_embeddings(pixel_values)`. A model without `config.fusion` gets its trained
embeddings only (`fused` and `gallery` are then those), as before the intake existed.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.images import ImageSource, load_image
from ..photo_batches import embed_batches, load_photos
from ..transforms import create_transform
from .fusion import fused_vectors, gallery_vectors
from .photo_intake import IntakeResult, PhotoIntake
from .settings import FusionConfig

__all__ = ["PhotoVectors", "embed_photo_files", "embed_photos", "model_fusion", "model_intake", "vector_size"]

ProgressFn = Callable[[int, int], None]
# Photos are loaded at most this big: a 4,032 x 3,024 JPEG then decodes at half scale (62 ms on 2 cores instead of
# 253 ms for 2,048 px), and an animal a quarter of the photo wide still gives a crop above the models' 224 px.
MAX_SIDE = 1024
_INTAKES: dict[str, PhotoIntake] = {}


@dataclass
class PhotoVectors:
    """intake: what the intake saw in each photo. trained: (N, E) the trained embeddings, untrained: (N, 1280) the
    untrained ImageNet features, each the mean of the photo's whole view and its crop (the whole view alone when it
    was not cropped). fused: (N, F) unit vectors whose cosine is the per-kind fused similarity. gallery: (N, F + 2)
    the fused vectors with their species block."""

    intake: list[IntakeResult]
    trained: np.ndarray
    untrained: np.ndarray = field(repr=False)
    fused: np.ndarray = field(repr=False)
    gallery: np.ndarray = field(repr=False)


def model_intake(model) -> PhotoIntake | None:
    """The intake a model's config describes (one per distinct config in a process), None without one."""
    settings = getattr(model.config, "intake", None)
    if settings is None:
        return None
    # The settings hold the kind head's weights (~190 KB of JSON): a model remembers the intake of the settings object
    # it has now, so a request does not serialise them again (new settings are assigned whole, as the configs do).
    seen = model.__dict__.get("_petmatch_intake")
    if seen is not None and seen[0] is settings:
        return seen[1]
    key = json.dumps(settings, sort_keys=True)
    if key not in _INTAKES:
        _INTAKES[key] = PhotoIntake(settings)
    model.__dict__["_petmatch_intake"] = (settings, _INTAKES[key])
    return _INTAKES[key]


def model_fusion(model) -> FusionConfig | None:
    settings = getattr(model.config, "fusion", None)
    return None if settings is None else FusionConfig.from_dict(settings)


def vector_size(model) -> int:
    """Dimension of `embed_photos(model, ...).gallery`."""
    size = int(getattr(model.config, "embedding_size", 0) or model.config.hidden_size)
    return size + 1280 + 2 if model_fusion(model) is not None else size


@torch.no_grad()
def _trained(model, images: Sequence, batch_size: int) -> np.ndarray:
    transform = create_transform(model.backbone.data_config, train=False)
    out = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([transform(im) for im in images[start : start + batch_size]])  # (B, 3, H, W)
        out.append(model.photo_embeddings(pixels).float().numpy())
    return np.concatenate(out)


def embed_photos(
    model,
    photos: Sequence[ImageSource],
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    keep_pixels: bool = True,
) -> PhotoVectors:
    """Every photo through the model's intake (when it has one), then the trained embedder and the fusion.

    Photos are loaded with `load_image` first, so a bad file fails with an `ImageLoadError` naming it before any
    model work. Photos the intake would have reshot are embedded all the same (their `intake[i].reshoot` says
    why): the caller decides (the app refuses them, the evaluation scores them as they are). `keep_pixels=False`
    drops each photo's pixels once it is embedded (`intake[i].image` / `.crop` are None), for thousands of photos."""
    load = functools.partial(load_image, max_side=MAX_SIDE)
    images: list = load_photos(photos, load)[0] if keep_pixels else list(photos)
    if model.training:  # eval() walks every module: not on each request
        model.eval()
    intake = model_intake(model)
    fusion = model_fusion(model)
    results: list[IntakeResult] = []
    untrained: list[np.ndarray] = []

    def embed_chunk(chunk: list) -> np.ndarray:
        if intake is not None:
            seen = intake(chunk)
            untrained.append(np.stack([r.features for r in seen]))
        else:
            seen = [IntakeResult(None, 0.0, 0.0, None, box=(0, 0, *im.size), image=im, crop=im, reshoot=None) for im in chunk]
        results.extend(seen)
        # A cropped photo's trained embedding is the mean of its whole view's and its crop's, like its untrained one.
        views = [view for r in seen for view in ((r.image, r.crop) if r.cropped else (r.image,))]
        flat = _trained(model, views, batch_size)
        rows, at = [], 0
        for r in seen:
            n = 2 if r.cropped else 1
            rows.append(flat[at : at + n].sum(0))
            at += n
        emb = np.stack(rows)
        if not keep_pixels:
            for r in seen:
                r.image = r.crop = None
        return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)

    trained = embed_batches(images, embed_chunk, load=None if keep_pixels else load, batch_size=batch_size, progress=progress)
    if not images:
        empty = np.zeros((0, vector_size(model)), np.float32)
        return PhotoVectors([], empty, empty, empty, empty)
    t = trained.vectors.astype(np.float32)
    if intake is None:
        return PhotoVectors(results, t, np.zeros((len(t), 0), np.float32), t, t)
    u = np.concatenate(untrained).astype(np.float32)
    if fusion is None:
        return PhotoVectors(results, t, u, t, t)
    kinds = [r.kind or "dog_body" for r in results]
    fused = fused_vectors(t, u, np.array(fusion.weights(kinds)))
    return PhotoVectors(results, t, u, fused, gallery_vectors(fused, [r.species for r in results]))


def embed_photo_files(model, paths: Sequence[str], batch_size: int = 16) -> PhotoVectors:
    """`embed_photos(..., keep_pixels=False)` of photo files, each file embedded once per model and process: the
    evaluations draw many galleries and pairs from the same photos (memo keyed by the model's config, the path and
    the file's modification time and size)."""
    memo = model.__dict__.setdefault("_petmatch_photo_memo", {})
    config_key = json.dumps({"intake": model.config.intake, "fusion": model.config.fusion}, sort_keys=True)
    memo = memo.setdefault(config_key, {})

    def key(path: str) -> tuple:
        st = os.stat(path)
        return (os.fspath(path), st.st_mtime_ns, st.st_size)

    keys = [key(p) for p in paths]
    todo = sorted({k for k in keys if k not in memo})
    if todo:
        fresh = embed_photos(model, [k[0] for k in todo], batch_size=batch_size, keep_pixels=False)
        for i, k in enumerate(todo):
            memo[k] = (fresh.intake[i], fresh.trained[i], fresh.untrained[i], fresh.fused[i], fresh.gallery[i])
    rows = [memo[k] for k in keys]
    if not rows:
        return embed_photos(model, [])
    return PhotoVectors([r[0] for r in rows], *(np.stack([r[i] for r in rows]) for i in range(1, 5)))
