"""Gallery rejection thresholds of the ArcFace embedder, calibrated on the validation dogs.

An embedder alone only ranks a gallery; to say "none of these" a gallery needs thresholds on the best
score and on the vote margin of its top k. After training, the val dogs are split under the gallery
protocol of `python -m model_pkg.evaluate gallery` (`data.samplers.split_gallery_queries`: some photos
per dog in the gallery, a share of the dogs held out as unknown), `GalleryIndex.calibrate` chooses the
thresholds there, and `store_gallery_thresholds` writes them into the model config, so a saved embedder
carries them. Separate from `training.py` because `scripts/ship_embedder.py` recalibrates shipped models
with it too.
"""

from __future__ import annotations

import numpy as np

from ..data.samplers import split_gallery_queries
from ..gallery import GalleryIndex
from .modeling_arcface import ArcFaceEmbedderModel

__all__ = ["calibrate_gallery_thresholds", "store_gallery_thresholds"]


def calibrate_gallery_thresholds(
    embeddings: dict[str, np.ndarray],
    groups: dict[str, list[str]],
    gallery_per_id: int,
    unknown_fraction: float,
    seed: int = 0,
    k: int = 20,
) -> tuple[GalleryIndex, dict] | tuple[None, dict]:
    """Calibrate gallery thresholds on `groups` (the val dogs) under the gallery protocol.

    Returns the calibrated gallery and its calibration numbers plus the retrieval metrics there, or
    `(None, reason)` when the split has no unknown or no known queries to calibrate on."""
    split = split_gallery_queries(groups, gallery_per_id, unknown_fraction, seed)
    unknown = set(split.unknown_labels)
    known_q = [i for i, lab in enumerate(split.query_labels) if lab not in unknown]
    unknown_q = [i for i, lab in enumerate(split.query_labels) if lab in unknown]
    if not known_q or not unknown_q:
        return None, {"skipped": "calibration needs both known and unknown queries (unknown_fraction > 0, >= 2 dogs)"}
    gallery = GalleryIndex(len(next(iter(embeddings.values()))), "ip", approximate_above=max(len(split.gallery_paths), 1))
    gallery.add(np.stack([embeddings[p] for p in split.gallery_paths]), split.gallery_labels)
    queries = np.stack([embeddings[p] for p in split.query_paths])
    result = gallery.calibrate(queries[known_q], [split.query_labels[i] for i in known_q], queries[unknown_q], k=k)
    result["gallery_per_id"] = gallery_per_id
    result["unknown_fraction"] = unknown_fraction
    return gallery, result


def store_gallery_thresholds(
    model: ArcFaceEmbedderModel, gallery: GalleryIndex | None, gallery_k: int, gallery_per_id: int
) -> None:
    """Write a calibrated gallery's thresholds (and the protocol they hold for) into `model.config`; nothing
    when calibration was skipped (`gallery` None)."""
    if gallery is None:
        return
    model.config.score_threshold = gallery.score_threshold
    model.config.margin_threshold = gallery.margin_threshold
    model.config.gallery_k = gallery_k
    model.config.gallery_per_id = gallery_per_id
