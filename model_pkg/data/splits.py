"""Identity-disjoint train/val/test splits that are created once and then reused.

Splitting by identity (not by photo) is what makes validation honest for a
"same animal?" model: no dog seen in training is ever scored in val/test.
Saving the split to JSON and reloading it keeps those sets fixed across runs,
code changes and machines.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np

from ..fileio import atomic_write_json
from .folders import column_values

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


class SplitFileError(ValueError):
    """A saved split file is unreadable or inconsistent."""


def split_identities(
    labels: Iterable[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Randomly partition the distinct identities into train/val/test.

    ``labels`` may repeat (e.g. one entry per photo). Each split gets about its
    fraction of identities and at least one whenever its fraction is > 0, so with
    the defaults every split is non-empty; a fraction of 0 gives an empty split.
    The result depends only on the set of identities and ``seed``, and each list
    is sorted.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave identities for training, got {val_fraction} + {test_fraction}"
        )
    unique = sorted({str(label) for label in labels})
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if len(unique) < needed:
        raise ValueError(
            f"need at least {needed} distinct identities to make non-empty train/val/test "
            f"splits, got {len(unique)}: {unique[:5]}. Add identities or set a fraction to 0"
        )
    n = len(unique)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    # Rounding up tiny fractions can eat the training set; take back from the larger one.
    while n - n_val - n_test < 1:
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    order = list(unique)
    # Shuffling the sorted list with a private RNG makes the split independent of
    # input order and of anything else using the global random state.
    random.Random(seed).shuffle(order)
    return {
        "train": sorted(order[n_val + n_test :]),
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


def _validate(splits: object, where: str) -> dict[str, list[str]]:
    if not isinstance(splits, dict):
        raise SplitFileError(f"{where}: expected an object with keys {list(SPLIT_NAMES)}, got {type(splits).__name__}")
    keys = set(splits)
    if keys != set(SPLIT_NAMES):
        raise SplitFileError(f"{where}: expected exactly the keys {list(SPLIT_NAMES)}, got {sorted(keys)}")
    clean: dict[str, list[str]] = {}
    for name in SPLIT_NAMES:
        ids = splits[name]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise SplitFileError(f"{where}: '{name}' must be a list of identity strings")
        if len(set(ids)) != len(ids):
            raise SplitFileError(f"{where}: '{name}' lists an identity more than once")
        clean[name] = list(ids)
    for i, a in enumerate(SPLIT_NAMES):
        for b in SPLIT_NAMES[i + 1 :]:
            shared = sorted(set(clean[a]) & set(clean[b]))
            if shared:
                raise SplitFileError(
                    f"{where}: identities appear in both '{a}' and '{b}' (e.g. {shared[:3]}); splits must be disjoint"
                )
    return clean


def save_splits(splits: dict[str, list[str]], path: str | os.PathLike) -> None:
    """Write the split as JSON atomically, so a crash never leaves a half-written file."""
    clean = _validate(splits, "splits to save")
    atomic_write_json({name: sorted(clean[name]) for name in SPLIT_NAMES}, path, indent=1)


def load_splits(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split saved by :func:`save_splits`, checking its keys and disjointness."""
    path = Path(path)
    where = f"split file {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist: create it with get_or_create_splits()")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SplitFileError(
            f"{where} is not valid JSON ({exc}): restore it from version control, or delete it "
            f"to create a new split (this changes which identities are held out)"
        ) from exc
    try:
        return _validate(raw, where)
    except SplitFileError as exc:
        raise SplitFileError(
            f"{exc}. Fix or delete the file to create a new split (this changes which identities are held out)"
        ) from None


def get_or_create_splits(
    labels: Iterable[str],
    path: str | os.PathLike,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Load the split at ``path`` if it exists, otherwise create it from ``labels`` and save it.

    An existing file always wins over the fraction/seed arguments, so runs stay
    comparable. Saved identities missing from ``labels`` are dropped from the
    result (with a warning); identities in ``labels`` that the file does not
    mention are left out of every split (also warned). A file sharing no identity
    with ``labels`` is an error: it almost certainly belongs to another dataset.
    """
    labels = {str(label) for label in labels}
    path = Path(path)
    if not path.exists():
        splits = split_identities(labels, val_fraction, test_fraction, seed)
        save_splits(splits, path)
        logger.info("created split %s: %s", path, {k: len(v) for k, v in splits.items()})
        return splits
    saved = load_splits(path)
    saved_ids = set().union(*saved.values())
    known = saved_ids & labels
    if not known:
        raise SplitFileError(
            f"split file {str(path)!r} names {len(saved_ids)} identities, none of which are in "
            f"the dataset ({len(labels)} identities, e.g. {sorted(labels)[:3]}): it belongs to "
            f"another dataset; pass a different path or delete it"
        )
    if len(known) < len(saved_ids):
        logger.warning(
            "%s: ignoring %d saved identities that are not in the dataset",
            path,
            len(saved_ids) - len(known),
        )
    unsplit = labels - saved_ids
    if unsplit:
        logger.warning(
            "%s: %d identities in the dataset are in no split and will not be used (e.g. %s); delete the file to re-split",
            path,
            len(unsplit),
            sorted(unsplit)[:3],
        )
    return {name: [i for i in saved[name] if i in labels] for name in SPLIT_NAMES}


def subset_by_identities(dataset: datasets.Dataset, identities: Iterable[str]) -> datasets.Dataset:
    """Rows of ``dataset`` whose label is one of ``identities``, in original order.

    Identities absent from the dataset are ignored, but if none of a non-empty
    list is present that is an error (usually a split from another dataset).
    """
    wanted = {str(i) for i in identities}
    if "label" not in dataset.column_names:
        raise ValueError(f"dataset has no 'label' column (columns: {dataset.column_names})")
    # select() on precomputed indices avoids filter()'s per-row Python calls and cache files.
    indices = [i for i, label in enumerate(column_values(dataset, "label")) if label in wanted]
    if wanted and not indices:
        raise ValueError(
            f"none of the {len(wanted)} requested identities (e.g. {sorted(wanted)[:3]}) are in "
            f"the dataset: was the split made for another dataset?"
        )
    return dataset.select(indices)


def split_by_group(groups: np.ndarray, eval_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (eval, half A, half B): groups in a seeded random order; eval takes whole groups up to
    ``eval_size`` rows (the group cut at the boundary gives its other rows to nobody); the remaining groups
    are dealt into two halves of about equal size."""
    rng = np.random.default_rng(seed)
    names, inverse = np.unique(groups, return_inverse=True)
    order = rng.permutation(len(names))
    rows_by_group = [np.flatnonzero(inverse == g) for g in order]
    eval_rows, rest, taken = [], [], 0
    for rows in rows_by_group:
        if taken < eval_size:
            take = rows[: eval_size - taken]
            eval_rows.append(take)
            taken += len(take)
        else:
            rest.append(rows)
    half = len(rest) // 2
    held = np.concatenate(eval_rows) if eval_rows else np.zeros(0, dtype=int)
    return held, np.concatenate(rest[:half]), np.concatenate(rest[half:])
