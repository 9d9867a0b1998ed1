"""What every evaluation task shares: the untrained ImageNet reference features (the baselines and the hard
negatives), reading an identity tree with its splits, JSON-safe values (saved models load through `model_pkg.loading`)."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import SplitFileError, as_dataset, group_paths, load_splits, nearest_identities, subset_by_identities
from ..features import compute_pooled, compute_tokens
from ..fileio import atomic_save_npy, cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE",
    "GALLERY_BASELINE",
    "REFERENCE_BACKBONE",
    "EvaluationError",
    "cache_dir",
    "hard_neighbours",
    "json_safe",
    "load_groups",
    "reference_features",
]

BASELINE = "imagenet-cosine"
GALLERY_BASELINE = "imagenet"  # `evaluate gallery`: the same untrained reference features, cosine
REFERENCE_BACKBONE = "tf_efficientnet_lite0"
# Reference features are computed this many photos at a time, so memory stays bounded on big trees.
_REFERENCE_CHUNK = 512


class EvaluationError(ValueError):
    """The evaluation cannot run with these inputs (missing folder, wrong model, unknown split, too few dogs)."""


@functools.lru_cache(maxsize=1)
def _reference_backbone():
    from ..backbones import create_backbone

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
        chunks = []
        for start in range(0, len(ordered), _REFERENCE_CHUNK):
            tokens = compute_tokens(
                backbone, ordered[start : start + _REFERENCE_CHUNK], batch_size=batch_size, desc="reference features"
            )
            chunks.append(compute_pooled(backbone, tokens).numpy().astype(np.float32))
        array = np.concatenate(chunks)
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


def load_groups(data: Any, splits: Any, split: str, threshold_split: str | None):
    """-> (groups of the evaluated identities, groups of the threshold split or None)."""
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        if not root.exists():
            raise EvaluationError(f"data folder {str(root)!r} does not exist: pass --data <folder with one sub-folder per dog>")
        if not root.is_dir():
            raise EvaluationError(f"data path {str(root)!r} is not a folder: pass the folder with one sub-folder per dog")
    table = as_dataset(data)
    if splits is None:
        return group_paths(table), None
    if isinstance(splits, Mapping):
        split_map = {str(k): list(v) for k, v in splits.items()}
        where = "the given splits"
    else:
        where = f"splits file {os.fspath(splits)!r}"
        try:
            split_map = load_splits(splits)
        except FileNotFoundError as exc:
            raise EvaluationError(f"{where} does not exist: pass the splits.json saved by training") from exc
        except SplitFileError as exc:
            raise EvaluationError(str(exc)) from exc

    def subset(name: str, role: str):
        if name not in split_map:
            raise EvaluationError(f"{role} split {name!r} is not in {where}; it has {sorted(split_map)}")
        ids = split_map[name]
        if not ids:
            raise EvaluationError(f"{role} split {name!r} of {where} lists no identities")
        try:
            return group_paths(subset_by_identities(table, ids))
        except ValueError as exc:
            raise EvaluationError(f"{role} split {name!r}: {exc}") from exc

    return subset(split, "evaluated"), (subset(threshold_split, "threshold") if threshold_split else None)


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
