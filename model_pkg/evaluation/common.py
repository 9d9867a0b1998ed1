"""What every evaluation task shares: the baselines' names, reading an identity tree with its splits, JSON-safe values.
The untrained ImageNet reference features (the baselines and the hard negatives) are `model_pkg.features`'; saved
models load through `model_pkg.loading`."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data import SplitFileError, as_dataset, group_paths, load_splits, subset_by_identities

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE",
    "GALLERY_BASELINE",
    "EvaluationError",
    "json_safe",
    "load_groups",
]

BASELINE = "imagenet-cosine"
GALLERY_BASELINE = "imagenet"  # `evaluate gallery`: the same untrained reference features, cosine


class EvaluationError(ValueError):
    """The evaluation cannot run with these inputs (missing folder, wrong model, unknown split, too few dogs)."""


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
