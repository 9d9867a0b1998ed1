"""Evaluation per task: `pair` (set-vs-set verification), `gallery` (identification with open-set rejection),
`text_search` (image-text retrieval), on `common` (the baselines, data), `model_pkg.features` (the ImageNet reference features, hard
negatives) and `model_pkg.loading` (saved models). The command line is `python -m model_pkg.evaluate <task> ...` (`model_pkg/evaluate.py`)."""

from ..features import REFERENCE_BACKBONE, hard_neighbours, reference_features
from .common import BASELINE, GALLERY_BASELINE, EvaluationError, load_groups
from .gallery import evaluate_gallery_protocol
from .pair import NEGATIVE_MODES, draw_pairs, evaluate_pair, save_pair_scores
from .text_search import evaluate_text_search

__all__ = [
    "BASELINE",
    "GALLERY_BASELINE",
    "NEGATIVE_MODES",
    "REFERENCE_BACKBONE",
    "EvaluationError",
    "draw_pairs",
    "evaluate_gallery_protocol",
    "evaluate_pair",
    "evaluate_text_search",
    "hard_neighbours",
    "load_groups",
    "reference_features",
    "save_pair_scores",
]
