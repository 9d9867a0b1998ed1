"""The photo intake (what is in a photo, where, is it usable) and the calibrated fusion of the trained embedder with
the untrained ImageNet features, per kind of photo. Names load on first use, so a config can import the settings
without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "KINDS": "settings",
    "SPECIES": "settings",
    "FusionConfig": "settings",
    "IntakeConfig": "settings",
    "KindFusion": "settings",
    "IntakeResult": "photo_intake",
    "PhotoIntake": "photo_intake",
    "reference_network": "reference",
    "reference_features": "reference",
    "PhotoVectors": "embedding",
    "embed_photos": "embedding",
    "fused_vectors": "fusion",
    "gallery_vectors": "fusion",
    "pair_kind": "fusion",
}

__all__ = [
    "KINDS",
    "SPECIES",
    "FusionConfig",
    "IntakeConfig",
    "IntakeResult",
    "KindFusion",
    "PhotoIntake",
    "PhotoVectors",
    "embed_photos",
    "fused_vectors",
    "gallery_vectors",
    "pair_kind",
    "reference_features",
    "reference_network",
]

if TYPE_CHECKING:
    from .embedding import PhotoVectors, embed_photos
    from .fusion import fused_vectors, gallery_vectors, pair_kind
    from .photo_intake import IntakeResult, PhotoIntake
    from .reference import reference_features, reference_network
    from .settings import KINDS, SPECIES, FusionConfig, IntakeConfig, KindFusion

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
