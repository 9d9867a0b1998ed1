"""What an identification answers: the vote (decided at the thresholds of the photo's kind, `kind_thresholds`), the best-matching
animals beside it, and the sentence a person reads (who it is, or why the photo was rejected and what to do)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..gallery import Prediction
from ..intake.photo_intake import IntakeResult
from ..intake.settings import FusionConfig

__all__ = ["KIND_NAMES", "GalleryMatch", "Identification", "kind_thresholds"]

KIND_NAMES = {"dog_face": "dog faces", "dog_body": "whole dogs", "cat_face": "cat faces", "cat_body": "cats in photos"}


def kind_thresholds(
    fusion: FusionConfig | None, kind: str | None, score_threshold: float | None, margin_threshold: float
) -> tuple[float | None, float]:
    """The gallery's (score, margin) thresholds for a query of `kind`: the fusion's for that kind
    (`KindFusion.gallery_score_threshold` / `gallery_margin_threshold`), the gallery's own where it has none."""
    settings = fusion.kinds.get(kind) if fusion is not None and kind is not None else None
    if settings is not None and settings.gallery_score_threshold is not None:
        score_threshold = settings.gallery_score_threshold
    if settings is not None and settings.gallery_margin_threshold is not None:
        margin_threshold = settings.gallery_margin_threshold
    return score_threshold, margin_threshold


@dataclass
class GalleryMatch:
    """One registered animal among the best matches: its best photo and that photo's cosine similarity."""

    label: str
    score: float
    photo: str
    animal: str = ""  # the animal's id (`AnimalRecord.id`); the photo's id is the file name without extension


@dataclass
class Identification:
    prediction: Prediction
    matches: list[GalleryMatch] = field(default_factory=list)
    score_threshold: float | None = None
    margin_threshold: float = 0.0
    intake: IntakeResult | None = field(default=None, repr=False)  # what the intake saw in the query (its crop)

    def message(self) -> str:
        """One sentence for a person: who it is, or why the photo was rejected and what to do."""
        p = self.prediction
        if self.intake is not None and self.intake.reshoot:
            return f"Reshoot: {self.intake.reshoot}."
        if p.reason is None:
            return f"Identified: {p.label} (vote share {p.confidence:.0%}, best photo similarity {p.top_score:.2f})."
        closest = self.matches[0].label if self.matches else "none"
        if p.reason == "unknown":
            return (
                f"Unknown animal - reshoot or register it: the best similarity {p.top_score:.2f} is below the "
                f"gallery's threshold{self._for_kind} {self.score_threshold:.2f} (closest: {closest}). {self._retake}, "
                "or register this animal if it is new."
            )
        runner_up = p.candidates[1][0] if len(p.candidates) > 1 else "another animal"
        return (
            f"Not sure - reshoot: {p.candidates[0][0]} and {runner_up} are about equally likely (vote margin "
            f"{p.margin:.2f} < {self.margin_threshold:.2f}). {self._retake}."
        )

    @property
    def _for_kind(self) -> str:
        kind = self.intake.kind if self.intake is not None else None
        return f" for {KIND_NAMES[kind]}" if kind in KIND_NAMES else ""

    @property
    def _retake(self) -> str:
        """What to photograph instead: the face for a face photo, the whole animal for a photo of its body."""
        if self.intake is not None and self.intake.kind is not None and self.intake.kind.endswith("_body"):
            return f"Take a sharp, well-lit photo of the whole {self.intake.species}, filling most of the frame"
        return "Take a sharp, frontal, well-lit photo of the face"
