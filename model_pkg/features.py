"""Backbone features of many photos at once, cached with `datasets.map` so a frozen backbone runs once.

Used by the frozen-backbone training phase (train on cached tokens, not pixels) and by evaluation (each photo
is embedded once however many pairs it appears in). At the end, the untrained ImageNet reference features
(`reference_features`, cached on disk): the evaluation's baselines, and `hard_neighbours`, the hard-negative
mining of training and evaluation (each dog's nearest other dogs).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import Backbone, create_backbone
from .data import load_image, nearest_identities
from .fileio import atomic_save_npy, cache_dir
from .photo_batches import PixelLoader, load_photos
from .transforms import create_transform

logger = logging.getLogger(__name__)

__all__ = [
    "REFERENCE_BACKBONE",
    "compute_activation_views",
    "compute_layer_features",
    "compute_pooled",
    "compute_pooled_features",
    "compute_tokens",
    "hard_neighbours",
    "reference_features",
]

_FEATURE_CHUNK = 512  # photos per compute_tokens call in compute_pooled_features, so token memory stays bounded


@torch.no_grad()
def compute_tokens(
    backbone: Backbone,
    image_paths: Sequence[str],
    batch_size: int = 32,
    cache_file: str | None = None,
    desc: str = "backbone tokens",
    layer: str | None = None,
) -> torch.Tensor:
    """Run `backbone` (eval mode, eval transform) over `image_paths` -> float16 tokens (N, T, D), of the
    final feature map or of `layer` (`stage<N>`, `Backbone.forward_tokens`).

    With `cache_file` (an .arrow path), results are stored there by `datasets` and reused when the
    same paths are asked for again, e.g. when a training run resumes.
    """
    if cache_file and backbone.tta_flip:  # flip-TTA tokens (`Backbone.tta_flip`) never reuse single-view ones
        root, ext = os.path.splitext(cache_file)
        cache_file = f"{root}-flip{ext}"
    transform = create_transform(backbone.data_config, train=False)
    was_training = backbone.training
    backbone.eval()
    t, d = backbone.token_shape(layer)

    def embed(batch):
        pixels = torch.stack(load_photos(batch["image_path"], PixelLoader(transform))[0])
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return {"tokens": backbone.forward_tokens(pixels, layer).to(torch.float16).numpy()}

    table = datasets.Dataset.from_dict({"image_path": [str(p) for p in image_paths]})
    features = datasets.Features(
        {"image_path": datasets.Value("string"), "tokens": datasets.Array2D(shape=(t, d), dtype="float16")}
    )
    try:
        mapped = _map_cached(table, embed, features, batch_size, cache_file, desc)
    finally:
        backbone.train(was_training)
    return torch.from_numpy(np.asarray(mapped.with_format("numpy")["tokens"]))


def _map_cached(
    table: datasets.Dataset, fn, features: datasets.Features, batch_size: int, cache_file: str | None, desc: str
) -> datasets.Dataset:
    """`table.map(fn)` in batches, stored in (and reused from) `cache_file` when one is given."""
    if cache_file:
        os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
    return table.map(
        fn,
        batched=True,
        batch_size=batch_size,
        features=features,
        cache_file_name=cache_file,
        load_from_cache_file=cache_file is not None,
        desc=desc,
    )


@torch.no_grad()
def compute_activation_views(
    backbone: Backbone,
    image_paths: Sequence[str],
    stage: int,
    views: int = 1,
    image_size: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    cache_file: str | None = None,
    desc: str = "stem activations",
) -> torch.Tensor:
    """The frozen stem's activation maps (`Backbone.forward_stem(., stage)`) of `views` views of each photo
    -> float16 (N, views, C, h, w).

    View 0 is the eval transform; views 1.. are the train transform's augmentations, each drawn from a
    seed of its own (photo index, view), so a rebuilt cache holds the same views. `image_size` (default
    the backbone's) sets the resolution: training can read a cache at a lower resolution than the model
    evaluates at. With `cache_file` (an .arrow path) `datasets` stores the maps and reuses them on resume.
    """
    if views < 1:
        raise ValueError(f"views={views} must be >= 1 (view 0 is the un-augmented photo).")
    size = image_size or backbone.image_size
    data_config = {**backbone.data_config, "input_size": (3, size, size)}
    eval_tf = create_transform(data_config, train=False)
    train_tf = create_transform(data_config, train=True)
    was_training = backbone.training
    backbone.eval()
    probe = backbone.forward_stem(torch.zeros(1, 3, size, size), stage)
    shape = tuple(probe.shape[1:])

    def embed(batch):
        pixels = []
        for path, row in zip(batch["image_path"], batch["row"]):
            view = row % views
            if view == 0:
                pixels.append(eval_tf(load_image(path)))
            else:
                torch.manual_seed(seed * 1_000_003 + row)  # torchvision's random transforms draw from torch's RNG
                pixels.append(train_tf(load_image(path)))
        x = torch.stack(pixels).contiguous(memory_format=torch.channels_last)
        return {"activations": backbone.forward_stem(x, stage).to(torch.float16).contiguous().numpy()}

    rows = [(str(p), i * views + v) for i, p in enumerate(image_paths) for v in range(views)]
    table = datasets.Dataset.from_dict({"image_path": [r[0] for r in rows], "row": [r[1] for r in rows]})
    features = datasets.Features(
        {
            "image_path": datasets.Value("string"),
            "row": datasets.Value("int64"),
            "activations": datasets.Array3D(shape=shape, dtype="float16"),
        }
    )
    torch_state = torch.get_rng_state()
    try:
        mapped = _map_cached(table, embed, features, batch_size, cache_file, desc)
    finally:
        torch.set_rng_state(torch_state)
        backbone.train(was_training)
    out = torch.from_numpy(np.asarray(mapped.with_format("numpy", dtype=np.float16)["activations"], dtype=np.float16))
    return out.reshape(len(image_paths), views, *shape)


@torch.no_grad()
def compute_pooled(backbone: Backbone, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Tokens (N, T, D) -> the backbone's pooled features (N, D) in float32."""
    out = [
        backbone.pool(tokens[i : i + batch_size].float())
        for i in tqdm(range(0, len(tokens), batch_size), desc="pool", disable=True)
    ]
    return torch.cat(out) if out else torch.zeros(0, backbone.token_dim)


def compute_pooled_features(
    backbone: Backbone, image_paths: Sequence[str], batch_size: int = 32, desc: str = "pooled features"
) -> torch.Tensor:
    """The backbone's pooled features (N, D) float32 of `image_paths` (eval transform): `compute_tokens` then
    `compute_pooled`, 512 photos at a time so the float16 tokens of a big collection never sit in memory at once."""
    chunks = []
    for start in range(0, len(image_paths), _FEATURE_CHUNK):
        tokens = compute_tokens(backbone, image_paths[start : start + _FEATURE_CHUNK], batch_size=batch_size, desc=desc)
        chunks.append(compute_pooled(backbone, tokens))
    return torch.cat(chunks) if chunks else torch.zeros(0, backbone.token_dim)


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


# -- the untrained ImageNet reference: the evaluation's baselines and the hard negatives of training and evaluation --
REFERENCE_BACKBONE = "tf_efficientnet_lite0"


@functools.lru_cache(maxsize=1)
def _reference_backbone():
    backbone = create_backbone(REFERENCE_BACKBONE, pretrained=True)
    backbone.eval()
    return backbone


def _paths_key(paths: Sequence[str], image_size: int) -> str:
    digest = hashlib.sha256(f"{REFERENCE_BACKBONE}:{image_size}\n".encode())
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\t{st.st_mtime_ns}\t{st.st_size}\n".encode())
    return digest.hexdigest()[:32]


def reference_features(paths: Sequence[str], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Pooled features (float32, D=1280) of the untrained ImageNet ``tf_efficientnet_lite0`` for each photo.

    Returns ``{path: vector}``. The features of a given set of photos are computed once and cached as
    ``<cache_dir()>/reference-tf_efficientnet_lite0-<hash>.npy`` (hash of the sorted paths with their
    modification times and sizes, so edited photos are recomputed), written atomically.
    """
    ordered = sorted({os.fspath(p) for p in paths})
    if not ordered:
        return {}
    backbone = _reference_backbone()
    key = _paths_key(ordered, backbone.image_size)
    file = cache_dir() / f"reference-{REFERENCE_BACKBONE}-{key}.npy"
    array = None
    if file.is_file():
        try:
            array = np.load(file)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable reference cache %s (%s): recomputing", file, exc)
        if array is not None and (array.ndim != 2 or array.shape[0] != len(ordered)):
            logger.warning("reference cache %s has shape %s for %d photos: recomputing", file, array.shape, len(ordered))
            array = None
    if array is None:
        array = compute_pooled_features(backbone, ordered, batch_size=batch_size, desc="reference features").numpy()
        array = array.astype(np.float32)
        atomic_save_npy(file, array)
    return {path: array[i] for i, path in enumerate(ordered)}


def hard_neighbours(
    groups: Mapping[str, Sequence[str]], batch_size: int = 32, k: int = 1
) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Each dog's ``k`` nearest other dogs (cosine of mean reference features) among ``groups``.

    Returns the neighbours and the per-photo reference features of all photos of ``groups``.
    """
    feats = reference_features([p for ps in groups.values() for p in ps], batch_size=batch_size)
    means = {dog: np.mean([feats[p] for p in ps], axis=0) for dog, ps in groups.items() if ps}
    return nearest_identities(means, k=k), feats
