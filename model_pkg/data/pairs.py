"""Sample pairs of photo *sets* labelled same-identity (1) or different-identity (0)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import numpy as np

from .folders import column_values

logger = logging.getLogger(__name__)


@dataclass
class SetPair:
    """Two sets of photos and whether they show the same identity (label 1) or not (0)."""

    paths_a: list[str]
    paths_b: list[str]
    label: int
    id_a: str
    id_b: str


def pair_records(pairs: Sequence[SetPair], augment: bool) -> list[dict]:
    """SetPair objects -> the dict rows the collators take (`augment`: whether the collator augments them)."""
    return [{"paths_a": p.paths_a, "paths_b": p.paths_b, "label": p.label, "augment": augment} for p in pairs]


def group_paths(dataset: datasets.Dataset) -> dict[str, list[str]]:
    """Map each identity to its sorted, de-duplicated image paths."""
    missing = [c for c in ("image_path", "label") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset lacks column(s) {missing}; it has {dataset.column_names}")
    groups: dict[str, set[str]] = {}
    for path, label in zip(column_values(dataset, "image_path"), column_values(dataset, "label")):
        groups.setdefault(str(label), set()).add(path)
    return {label: sorted(paths) for label, paths in sorted(groups.items())}


def _size_range(set_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(set_size, bool):
        raise TypeError("set_size must be an int or a (min, max) tuple, not a bool")
    if isinstance(set_size, int):
        lo = hi = set_size
    elif (
        isinstance(set_size, (tuple, list))
        and len(set_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in set_size)
    ):
        lo, hi = set_size
    else:
        raise TypeError(f"set_size must be an int or a (min, max) tuple of ints, got {set_size!r}")
    if lo < 1:
        raise ValueError(f"set_size must be >= 1 photo per side, got {set_size!r}")
    if hi < lo:
        raise ValueError(f"set_size range {set_size!r} has max < min")
    return lo, hi


def _positive_sides(n: int, lo: int, hi: int, overlap: bool, rng: random.Random) -> tuple[int, int]:
    ka, kb = rng.randint(lo, hi), rng.randint(lo, hi)
    if overlap:
        ka, kb = min(ka, n), min(kb, n)
        if ka == kb == n:
            kb -= 1  # eligibility guarantees n > lo, so this stays >= lo and keeps the sets different
        return ka, kb
    if ka + kb > n:
        # Not enough photos for two disjoint sets of the drawn sizes: cap each side
        # at half the photos; eligibility guarantees n // 2 >= lo.
        ka, kb = min(ka, n // 2), min(kb, n // 2)
    return ka, kb


def sample_pairs(
    source: datasets.Dataset | Mapping[str, Sequence[str]],
    num_pairs: int,
    set_size: int | tuple[int, int] = 1,
    positive_ratio: float = 0.5,
    seed: int = 0,
    negatives: str = "random",
    neighbours: Mapping[str, Sequence[str]] | None = None,
    allow_overlap: bool = False,
) -> list[SetPair]:
    """Draw ``num_pairs`` shuffled set pairs, exactly ``round(num_pairs * positive_ratio)`` positive.

    ``source`` is a dataset with image_path/label columns or a mapping
    identity -> paths. ``set_size`` fixes the photos per side, or with ``(lo, hi)``
    each side's size is drawn uniformly from that range.

    Positives pick an identity uniformly and draw two *disjoint* sets from its
    photos, so a positive needs at least ``2 * lo`` photos; when the drawn sizes
    do not fit, both sides are capped at half the identity's photos (never below
    ``lo``). Identities with fewer than ``2 * lo`` photos therefore appear only in
    negatives. With ``allow_overlap`` the two sets may share photos (never being
    identical), and any identity with more than ``max(lo, 1)`` photos can be positive.

    Negatives pair a uniformly chosen identity with a different one: uniformly at
    random (``negatives="random"``) or among ``neighbours[id_a]``
    (``negatives="hard"``), the caller's list of most similar identities, e.g. from
    :func:`nearest_identities`. Identities with fewer than ``lo`` photos cannot fill
    a side and are never used. The same arguments always give the same pairs.
    """
    if not isinstance(num_pairs, int) or num_pairs < 0:
        raise ValueError(f"num_pairs must be a non-negative int, got {num_pairs!r}")
    if not 0.0 <= positive_ratio <= 1.0:
        raise ValueError(f"positive_ratio must be in [0, 1], got {positive_ratio}")
    lo, hi = _size_range(set_size)
    if negatives not in ("random", "hard"):
        raise ValueError(f"negatives must be 'random' or 'hard', got {negatives!r}")
    if negatives == "hard" and neighbours is None:
        raise ValueError(
            "negatives='hard' needs neighbours={identity: [similar identities]}: compute "
            "per-identity mean embeddings and pass nearest_identities(embeddings)"
        )

    if isinstance(source, datasets.Dataset):
        groups = group_paths(source)
    elif isinstance(source, Mapping):
        groups = {str(k): sorted(set(v)) for k, v in source.items()}
    else:
        raise TypeError(f"source must be a datasets.Dataset or a dict identity -> paths, got {type(source).__name__}")

    n_pos = round(num_pairs * positive_ratio)
    n_neg = num_pairs - n_pos
    rng = random.Random(seed)

    # Sorted candidate lists make the draws independent of dict insertion order.
    usable = sorted(label for label, paths in groups.items() if len(paths) >= lo)
    too_small = len(groups) - len(usable)
    if too_small:
        logger.warning(
            "%d identities have fewer than %d photo(s) and cannot fill a set; they are not used",
            too_small,
            lo,
        )
    if allow_overlap:
        positive_ids = [label for label in usable if len(groups[label]) > max(lo, 1)]
    else:
        positive_ids = [label for label in usable if len(groups[label]) >= 2 * lo]

    pairs: list[SetPair] = []
    if n_pos:
        if not positive_ids:
            need = f"more than {max(lo, 1)}" if allow_overlap else f"at least {2 * lo}"
            raise ValueError(
                f"no identity has {need} photos, which a positive pair with set_size={set_size!r} "
                f"needs ({'overlapping' if allow_overlap else 'two disjoint'} sets): lower set_size, "
                f"add photos, or use allow_overlap=True"
            )
        for _ in range(n_pos):
            label = rng.choice(positive_ids)
            photos = groups[label]
            ka, kb = _positive_sides(len(photos), lo, hi, allow_overlap, rng)
            if allow_overlap:
                side_a = rng.sample(photos, ka)
                side_b = rng.sample(photos, kb)
                if set(side_a) == set(side_b):
                    # Identical sets make a trivial positive: swap in one photo B lacks.
                    outside = [p for p in photos if p not in side_b]
                    side_b[rng.randrange(kb)] = rng.choice(outside)
            else:
                drawn = rng.sample(photos, ka + kb)
                side_a, side_b = drawn[:ka], drawn[ka:]
            pairs.append(SetPair(side_a, side_b, 1, label, label))

    if n_neg:
        if len(usable) < 2:
            raise ValueError(
                f"need at least two identities with >= {lo} photo(s) to form negative pairs; "
                f"found {len(usable)}: {usable[:3]}. Add identities or lower set_size"
            )
        usable_set = set(usable)
        if negatives == "hard":
            candidates = {
                label: [
                    n for n in dict.fromkeys(str(x) for x in (neighbours or {}).get(label, ())) if n != label and n in usable_set
                ]
                for label in usable
            }
            anchors = [label for label in usable if candidates[label]]
            if not anchors:
                raise ValueError(
                    "negatives='hard': no identity has a usable neighbour in `neighbours` "
                    "(keys/values must be identities of this dataset with enough photos)"
                )
            if len(anchors) < len(usable):
                logger.warning(
                    "negatives='hard': %d identities have no usable neighbours and are not used as the first side of negatives",
                    len(usable) - len(anchors),
                )
        for _ in range(n_neg):
            if negatives == "hard":
                id_a = rng.choice(anchors)
                id_b = rng.choice(candidates[id_a])
            else:
                i = rng.randrange(len(usable))
                # Uniform over the other identities without a rejection loop: skip index i.
                j = rng.randrange(len(usable) - 1)
                id_a, id_b = usable[i], usable[j + (j >= i)]
            ka = min(rng.randint(lo, hi), len(groups[id_a]))
            kb = min(rng.randint(lo, hi), len(groups[id_b]))
            pairs.append(SetPair(rng.sample(groups[id_a], ka), rng.sample(groups[id_b], kb), 0, id_a, id_b))

    rng.shuffle(pairs)
    return pairs


def nearest_identities(embeddings_by_id: Mapping[str, np.ndarray], k: int = 5) -> dict[str, list[str]]:
    """For each identity, the ``k`` other identities with the most cosine-similar embedding.

    Takes one (mean) embedding vector per identity; neighbours come most similar
    first. Fewer than ``k`` are returned when there are not enough identities.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = sorted(embeddings_by_id, key=str)
    if len(ids) < 2:
        raise ValueError(f"need embeddings of at least two identities, got {len(ids)}")
    vectors = [np.asarray(embeddings_by_id[i], dtype=np.float64).reshape(-1) for i in ids]
    dims = {v.shape[0] for v in vectors}
    if len(dims) != 1:
        raise ValueError(f"all embeddings must have the same length, got lengths {sorted(dims)}")
    matrix = np.stack(vectors)
    if not np.isfinite(matrix).all():
        bad = [i for i, v in zip(ids, vectors) if not np.isfinite(v).all()]
        raise ValueError(f"embeddings contain NaN/inf for identities {bad[:5]}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = matrix / np.maximum(norms, 1e-12)
    k = min(k, len(ids) - 1)
    result: dict[str, list[str]] = {}
    # Row blocks bound memory to block x N similarities even for many identities.
    block = 1024
    for start in range(0, len(ids), block):
        sims = matrix[start : start + block] @ matrix.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        for r, idx in zip(rows, order):
            result[ids[start + r]] = [ids[j] for j in idx]
    return result
