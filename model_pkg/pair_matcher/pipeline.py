"""User-facing pair matching: match two photo sets.

result = match_sets(model, ["found/1.jpg", "found/2.jpg"], ["lost/a.jpg"])
result.probability, result.same, result.photo_similarity

The seed's high-level trainer API (`PairMatchingTrainer`) and `save_with_card` are training: `trainer.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data import pad_sets
from ..intake.embedding import embed_photos, model_fusion, model_intake
from ..intake.fusion import DECISION_THRESHOLD, decide_pair
from ..photo_batches import PixelLoader, load_photos
from ..transforms import create_transform
from .modeling_pair_matcher import PairMatcherModel

__all__ = ["MatchResult", "match_sets"]


@dataclass
class MatchResult:
    """probability: same-animal probability; same: probability >= threshold; photo_similarity:
    (N, M) cosine between each photo of A and each photo of B, to show which photos agree most.

    With an intake (`config.intake`): intake_a / intake_b say what it saw in each photo (species, crop, reshoot
    reason), kind is the kind of photo whose calibration decided, notes what a person should know (photos left
    out, a species mismatch, an unsure species)."""

    probability: float
    same: bool
    threshold: float
    photo_similarity: np.ndarray = field(repr=False)
    kind: str | None = None
    notes: list[str] = field(default_factory=list)
    intake_a: list = field(default_factory=list, repr=False)
    intake_b: list = field(default_factory=list, repr=False)


@torch.no_grad()
def match_sets(model: PairMatcherModel, photos_a, photos_b, max_set_size: int = 50) -> MatchResult:
    """Decide whether two sets of photos (paths, PIL images or arrays) show the same animal."""
    for side, photos in (("A", photos_a), ("B", photos_b)):
        if isinstance(photos, (str, os.PathLike)):
            raise TypeError(f"Set {side} is a single path; pass a list of photos, e.g. [{str(photos)!r}].")
        if len(photos) == 0:
            raise ValueError(f"Set {side} is empty: give at least one photo per side.")
        if len(photos) > max_set_size:
            raise ValueError(f"Set {side} has {len(photos)} photos; at most {max_set_size} are compared at once.")
    if model_fusion(model) is not None:
        return _match_fused(model, photos_a, photos_b)
    load = PixelLoader(create_transform(model.data_config, train=False))
    pixels_a, mask_a = pad_sets([torch.stack(load_photos(photos_a, load)[0])])
    pixels_b, mask_b = pad_sets([torch.stack(load_photos(photos_b, load)[0])])
    model.eval()
    tokens_a = model.embed_photos(pixels_a[0])  # (N, T, D), each photo through the backbone once
    tokens_b = model.embed_photos(pixels_b[0])
    probability = float(model.predict_proba(tokens_a=tokens_a[None], mask_a=mask_a, tokens_b=tokens_b[None], mask_b=mask_b)[0])
    photo_a = model.token_norm(model.token_proj(model.backbone.pool(tokens_a)))  # (N, H)
    photo_b = model.token_norm(model.token_proj(model.backbone.pool(tokens_b)))  # (M, H)
    similarity = F.normalize(photo_a, dim=-1) @ F.normalize(photo_b, dim=-1).T
    threshold = model.decision_threshold(len(photos_a), len(photos_b))
    return MatchResult(probability, probability >= threshold, threshold, similarity.numpy())


def _match_fused(model: PairMatcherModel, photos_a, photos_b) -> MatchResult:
    """The intake, both matchers and the per-kind calibrated fusion (`model_pkg.intake.fusion.decide_pair`)."""
    fusion, intake = model_fusion(model), model_intake(model)
    assert fusion is not None and intake is not None  # the config checks that a fusion comes with an intake
    a, b = embed_photos(model, photos_a), embed_photos(model, photos_b)
    ta, tb = torch.from_numpy(a.trained), torch.from_numpy(b.trained)
    decision = decide_pair(
        fusion,
        intake.config.certain_species,
        a.intake,
        a.fused,
        b.intake,
        b.fused,
        lambda used_a, used_b: model.score_photo_embeddings(ta[used_a], tb[used_b]),
    )
    notes = list(decision.notes)
    for side, vectors in (("A", a), ("B", b)):
        notes += [f"set {side}, photo {i + 1}: {r.note}" for i, r in enumerate(vectors.intake) if r.note and r.usable]
    return MatchResult(
        probability=decision.probability,
        same=decision.same,
        threshold=DECISION_THRESHOLD,
        photo_similarity=a.fused @ b.fused.T,
        kind=decision.kind,
        notes=notes,
        intake_a=a.intake,
        intake_b=b.intake,
    )
