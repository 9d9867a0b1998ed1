"""Identity-aware sampling: P x K training batches, and the gallery / query split of the gallery protocol.

* :class:`PKBatchSampler` yields batches of P identities x K photos each, the batches metric-learning
  losses want (every batch holds positives and negatives for every identity in it). Pass it to a
  ``DataLoader`` as ``batch_sampler``; it is deterministic per ``(seed, epoch)``, so a resumed run
  sees the same batches.
* :func:`split_gallery_queries` is the gallery evaluation protocol: register G photos of each known
  identity, query with the others, and leave a fraction of identities out of the gallery entirely
  (open-set queries that must be rejected).
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

__all__ = ["GallerySplit", "PKBatchSampler", "prefix_group", "split_gallery_queries"]


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``p`` distinct identities x ``k`` photos each (``p * k`` dataset indices per batch).

    An epoch visits every identity once, in a random order, ``p`` at a time, so it has
    ``num_identities // p`` batches (``drop_last=True``; the identities left over are the first of
    another epoch's order) or ``ceil(num_identities / p)`` (``drop_last=False``, the last batch has
    fewer identities). Each visit draws ``k`` of the identity's photos without replacement; an identity
    with fewer than ``k`` photos contributes all of them once plus random repeats to fill ``k``.

    The batches depend only on ``labels``, ``seed`` and the epoch set with :meth:`set_epoch` (HF
    Trainer and accelerate call it at the start of every epoch), never on how many batches were
    drawn before.

    Args:
        labels: the identity of each dataset index (any hashable; compared as given).
        p: identities per batch.
        k: photos per identity.
        seed: base seed.
        drop_last: drop the last, smaller batch of an epoch.
        group_p: identities per batch from each group of identities (kind-balanced batches, e.g. 12 dog-face
            dogs + 4 whole-body dogs); the values sum to ``p`` and ``group_of`` names each identity's group. Each
            group then walks its own random order, starting a new one when it runs out, so a small group is
            visited more often; an epoch is as long as the largest group needs (``drop_last`` is then ignored).
        group_of: identity -> group (required with ``group_p``).
    """

    def __init__(
        self,
        labels: Sequence[Hashable],
        p: int,
        k: int,
        seed: int = 0,
        drop_last: bool = True,
        group_p: Mapping[Any, int] | None = None,
        group_of: Callable[[Any], Any] | None = None,
    ):
        for name, value in (("p", p), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        by_label: dict[Hashable, list[int]] = {}
        for index, label in enumerate(labels):
            by_label.setdefault(label, []).append(index)
        if not by_label:
            raise ValueError("labels is empty: PKBatchSampler needs at least one labelled example")
        if drop_last and len(by_label) < p:
            raise ValueError(
                f"p={p} identities per batch but the data has only {len(by_label)} identities: lower p "
                "(or pass drop_last=False for one smaller batch per epoch)"
            )
        # Sorted by the label's string form, so the order never depends on the order of `labels`.
        ordered = sorted(by_label, key=str)
        self._groups = [np.asarray(by_label[label]) for label in ordered]
        self.p, self.k, self.seed, self.drop_last = int(p), int(k), int(seed), drop_last
        self.epoch = 0
        self._kind_groups: list[tuple[np.ndarray, int]] = []  # (identity positions, identities per batch)
        if group_p is not None:
            if group_of is None:
                raise ValueError("group_p needs group_of: the group of each identity")
            if sum(group_p.values()) != self.p:
                raise ValueError(f"group_p={dict(group_p)} must sum to p={self.p} identities per batch")
            members: dict[Hashable, list[int]] = {g: [] for g in group_p}
            for position, label in enumerate(ordered):
                group = group_of(label)
                if group not in members:
                    raise ValueError(f"identity {label!r} is in group {group!r}, which group_p={dict(group_p)} lacks")
                members[group].append(position)
            for group, count in group_p.items():
                if count < 1 or len(members[group]) < count:
                    raise ValueError(f"group {group!r}: {count} identities per batch from its {len(members[group])} identities")
                self._kind_groups.append((np.asarray(members[group]), int(count)))
        small = sum(len(g) < self.k for g in self._groups)
        if small:
            logger.info(
                "%d of %d identities have fewer than k=%d photos: their photos repeat within a batch",
                small,
                len(self._groups),
                self.k,
            )

    @property
    def num_identities(self) -> int:
        return len(self._groups)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self._kind_groups:
            return max(len(members) // count for members, count in self._kind_groups)
        n = len(self._groups)
        return n // self.p if self.drop_last else math.ceil(n / self.p)

    def _identity_order(self, rng: np.random.Generator) -> np.ndarray:
        """The identities of every batch of an epoch, batch after batch."""
        if not self._kind_groups:
            return rng.permutation(len(self._groups))
        batches = len(self)
        columns = []
        for members, count in self._kind_groups:
            rounds = math.ceil(batches * count / len(members)) + 1
            walk = deque(int(i) for _ in range(rounds) for i in rng.permutation(members))
            picked = []
            for _ in range(batches):
                row: list[int] = []
                while len(row) < count:
                    candidate = walk.popleft()
                    if candidate in row:  # a new round can repeat an identity of the batch the old one ended in
                        walk.append(candidate)
                        continue
                    row.append(candidate)
                picked.append(row)
            columns.append(np.asarray(picked))
        return np.concatenate(columns, axis=1).reshape(-1)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self._identity_order(rng)
        for b in range(len(self)):
            batch: list[int] = []
            for g in order[b * self.p : (b + 1) * self.p]:
                photos = self._groups[g]
                if len(photos) >= self.k:
                    picks = rng.choice(photos, self.k, replace=False)
                else:
                    picks = np.concatenate([rng.permutation(photos), rng.choice(photos, self.k - len(photos))])
                batch.extend(int(i) for i in picks)
            yield batch


def prefix_group(name: str, groups: Mapping[str, Any]) -> str:
    """The group of an identity named `name`: the longest key of `groups` it starts with ("" matches every name)."""
    matches = [prefix for prefix in groups if name.startswith(prefix)]
    if not matches:
        raise ValueError(f"identity {name!r} starts with none of the group prefixes {sorted(groups)}.")
    return max(matches, key=len)


@dataclass
class GallerySplit:
    """One draw of the gallery protocol.

    gallery_*: the registered photos (G per known identity) and their identities; query_*: every other
    photo of the known identities, then every photo of the unknown ones; unknown_labels: identities
    left out of the gallery; skipped_labels: would-be known identities with too few photos (not used).
    """

    gallery_paths: list[str]
    gallery_labels: list[str]
    query_paths: list[str]
    query_labels: list[str]
    unknown_labels: list[str]
    skipped_labels: list[str] = field(default_factory=list)

    @property
    def known_labels(self) -> list[str]:
        return sorted(set(self.gallery_labels))


def split_gallery_queries(
    groups: Mapping[str, Sequence[str]], gallery_per_id: int, unknown_fraction: float, seed: int = 0
) -> GallerySplit:
    """Split identity -> photos into a gallery and queries (the gallery evaluation protocol).

    ``round(unknown_fraction * num_identities)`` identities (at least 1 when the fraction is > 0, and
    never all of them) are drawn as *unknown*: all their photos are queries and none is registered.
    Every other identity registers ``gallery_per_id`` random photos; its other photos are queries.
    An identity with ``gallery_per_id`` photos or fewer would have no query, so it is skipped (and
    listed in ``skipped_labels``). The same arguments always give the same split.

    Raises ``ValueError`` for ``gallery_per_id < 1``, ``unknown_fraction`` outside [0, 1), fewer than
    one identity, or when no known identity has more than ``gallery_per_id`` photos.
    """
    if isinstance(gallery_per_id, bool) or not isinstance(gallery_per_id, (int, np.integer)) or gallery_per_id < 1:
        raise ValueError(f"gallery_per_id must be an integer >= 1, got {gallery_per_id!r}")
    if not (isinstance(unknown_fraction, (int, float)) and 0.0 <= float(unknown_fraction) < 1.0):
        raise ValueError(
            f"unknown_fraction must lie in [0, 1) (the share of identities left out of the gallery), got {unknown_fraction!r}"
        )
    ids = sorted(str(i) for i, paths in groups.items() if len(paths))
    if not ids:
        raise ValueError("no identity has any photo: nothing to put in a gallery")
    photos = {str(i): sorted(str(p) for p in paths) for i, paths in groups.items()}
    rng = random.Random(seed)
    n_unknown = 0
    if unknown_fraction > 0 and len(ids) > 1:
        n_unknown = min(max(1, round(unknown_fraction * len(ids))), len(ids) - 1)
    unknown = sorted(rng.sample(ids, n_unknown))
    unknown_set = set(unknown)
    candidates = [i for i in ids if i not in unknown_set]
    known = [i for i in candidates if len(photos[i]) > gallery_per_id]
    skipped = [i for i in candidates if len(photos[i]) <= gallery_per_id]
    if not known:
        most = max(len(photos[i]) for i in candidates)
        raise ValueError(
            f"gallery_per_id={gallery_per_id} is larger than the photos available: a known identity needs more than "
            f"{gallery_per_id} photos (G to register, at least one to query), and the most any of the "
            f"{len(candidates)} known identities has is {most}; lower gallery_per_id"
        )
    if skipped:
        logger.warning(
            "%d of %d known identities have at most gallery_per_id=%d photos and are left out (e.g. %s)",
            len(skipped),
            len(candidates),
            gallery_per_id,
            skipped[:3],
        )
    split = GallerySplit([], [], [], [], unknown, skipped)
    for dog in known:
        chosen = set(rng.sample(photos[dog], gallery_per_id))
        for path in photos[dog]:
            if path in chosen:
                split.gallery_paths.append(path)
                split.gallery_labels.append(dog)
            else:
                split.query_paths.append(path)
                split.query_labels.append(dog)
    for dog in unknown:
        split.query_paths.extend(photos[dog])
        split.query_labels.extend([dog] * len(photos[dog]))
    return split
