"""Calibrated fusion of two matchers, per kind of photo: the trained identity embedder and the untrained ImageNet
features, as WildFusion does for wildlife.

Each photo gets a fused vector ``[sqrt(a) t, sqrt(1 - a) u]`` from its trained embedding ``t`` and its untrained
pooled features ``u`` (both unit length), where ``a`` is the weight of the trained matcher for the photo's kind
(dog face, whole dog, cat face, cat in a photo). The cosine of two fused vectors of one kind is then exactly
``a cos_t + (1 - a) cos_u``: the gallery searches these vectors as they are, and a set is the mean of its
photos' vectors. The trained embedder learnt dog faces; on cats it is worse than the features it started from,
so there ``a`` is small and the fusion routes around it. Each weight was chosen on validation animals of its
kind (`bench/fit_fusion.py`).

A pair of sets gets a probability of "same animal" from its fused cosine by Platt scaling (scikit-learn's
`LogisticRegression`), fitted per kind and set size on validation pairs and centred on the accuracy-optimal
cosine there, so every decision is ``probability >= 0.5``. Two sets of different species are never the same
animal. In the gallery, a species block appended to each vector keeps every cross-species similarity at or below
``SPECIES_FLOOR`` (0.25) while similarities within a species are mapped monotonically onto [0.5, 1]: a cat is never
the nearest neighbour of a dog while a dog of any similarity is registered, and never passes the rejection threshold
(species as the intake reads them: 100% right on the validation dogs and cat faces, 97.3% on cats in photos).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .photo_intake import IntakeResult
from .settings import SPECIES, FusionConfig

__all__ = ["DECISION_THRESHOLD", "SPECIES_FLOOR", "PairDecision", "decide_pair", "fused_vectors", "gallery_vectors", "pair_kind"]

# Species block: [v, c * onehot(species)] / sqrt(1 + c^2) with c^2 = 3 maps a same-species cosine s to (s + 3) / 4
# (>= 0.5) and a cross-species one to s / 4 (<= 0.25).
_SPECIES_SCALE = math.sqrt(3.0)
SPECIES_FLOOR = 0.25
DECISION_THRESHOLD = 0.5  # every kind and set size is centred on its accuracy-optimal cosine


def fused_vectors(trained: np.ndarray, untrained: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, E) and (N, D) unit vectors, (N,) trained weights -> (N, E + D) unit fused vectors."""
    t = trained / np.linalg.norm(trained, axis=1, keepdims=True).clip(1e-12)
    u = untrained / np.linalg.norm(untrained, axis=1, keepdims=True).clip(1e-12)
    w = np.asarray(weights, np.float32)[:, None]
    return np.hstack([np.sqrt(w) * t, np.sqrt(1.0 - w) * u]).astype(np.float32)


def gallery_vectors(fused: np.ndarray, species: Sequence[str | None]) -> np.ndarray:
    """Fused vectors with the species block appended (see the module docstring): (N, F) -> (N, F + 2), unit length.

    The block is ``c`` on the photo's species (the kind head's likelier one), so every photo of one species gets the
    same offset and rankings within a species are exactly those of the fused cosine (a block weighted by the species
    probability shifted unsure photos against sure ones and cost cats in photos 5 points of validation rank-1). A
    photo without a species (no animal found) gets no block."""
    block = np.zeros((len(species), len(SPECIES)), np.float32)
    for row, sp in enumerate(species):
        if sp in SPECIES:
            block[row, SPECIES.index(sp)] = _SPECIES_SCALE
    out = np.hstack([fused, block])
    return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


@dataclass
class PairDecision:
    """A fused set-vs-set decision. probability: of "same animal" (the decision is probability >= 0.5). kind: the
    kind whose calibration decided (None when the species differ). cosine: the fused cosine of the two sets' mean
    vectors. used_a / used_b: which photos counted (photos the intake would reshoot are left out while a side has a
    usable one). notes: what a person should know about the answer."""

    probability: float
    kind: str | None
    cosine: float
    used_a: list[int]
    used_b: list[int]
    notes: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return self.probability >= DECISION_THRESHOLD


def _side(results: Sequence[IntakeResult], name: str, notes: list[str]) -> list[int]:
    usable = [i for i, r in enumerate(results) if r.usable]
    for i, r in enumerate(results):
        if not r.usable and usable:
            notes.append(f"set {name}, photo {i + 1} left out: {r.reshoot}")
    return usable or list(range(len(results)))


def _species(results: Sequence[IntakeResult]) -> tuple[str | None, float]:
    """The species a set shows (the largest summed probability) and its mean probability over the set."""
    mass: dict[str, float] = {}
    for r in results:
        if r.species is not None:
            mass[r.species] = mass.get(r.species, 0.0) + r.species_probability
    if not mass:
        return None, 0.0
    species = max(mass, key=lambda sp: mass[sp])
    return species, mass[species] / len(results)


def decide_pair(
    fusion: FusionConfig,
    certain_species: float,
    results_a: Sequence[IntakeResult],
    fused_a: np.ndarray,
    results_b: Sequence[IntakeResult],
    fused_b: np.ndarray,
    matcher_score: Callable[[list[int], list[int]], float] | None = None,
) -> PairDecision:
    """The app's, the library's and the evaluation's one rule for two sets of photos (intake results and fused
    vectors, `model_pkg.intake.embed_photos`). `matcher_score(used_a, used_b)`: the pair matcher's own score of those
    photos, for kinds decided on it (`KindFusion.pair_score="matcher"`); without it they fall back on the fused cosine."""
    notes: list[str] = []
    used_a, used_b = _side(results_a, "A", notes), _side(results_b, "B", notes)
    if not any(results_a[i].usable for i in used_a) or not any(results_b[i].usable for i in used_b):
        notes.append("no photo of a set passed the intake: the answer rests on photos that should be retaken")
    ra, rb = [results_a[i] for i in used_a], [results_b[i] for i in used_b]
    (sp_a, p_a), (sp_b, p_b) = _species(ra), _species(rb)
    va, vb = fused_a[used_a].mean(0), fused_b[used_b].mean(0)
    cosine = float(va @ vb / max(float(np.linalg.norm(va) * np.linalg.norm(vb)), 1e-12))
    if sp_a != sp_b and p_a >= certain_species and p_b >= certain_species:
        notes.append(f"set A shows a {sp_a}, set B a {sp_b}: a {sp_a} and a {sp_b} are never the same animal")
        return PairDecision(0.0, None, cosine, used_a, used_b, notes)
    species = (sp_a if p_a >= p_b else sp_b) or "dog"
    kind = pair_kind(species, [r.kind or "" for r in ra], [r.kind or "" for r in rb])
    settings = fusion.kinds[kind]
    score = matcher_score(used_a, used_b) if settings.pair_score == "matcher" and matcher_score is not None else cosine
    probability = settings.probability(score, min(len(ra), len(rb)))
    return PairDecision(probability, kind, cosine, used_a, used_b, notes)


def pair_kind(species: str, kinds_a: Sequence[str], kinds_b: Sequence[str]) -> str:
    """The kind whose calibration decides a pair of sets of `species`: faces when most photos are faces, else whole
    bodies (a pair that mixes faces and whole bodies is decided as whole bodies)."""
    faces = sum(k.endswith("_face") for k in (*kinds_a, *kinds_b))
    return f"{species}_face" if faces * 2 > len(kinds_a) + len(kinds_b) else f"{species}_body"
