"""Backbone recommendation: rank candidate backbones for a class folder from cheap scores on a sample.

python -m model_pkg.recommend --data DIR --candidates a,b,c --json OUT
"""

from .candidates import Candidate, CandidateError, FeatureExtractor, parse_candidate, parse_candidates
from .recommend import CandidateResult, Recommendation, RecommendationError, recommend_backbones, sample_folder
from .scores import ScoreInputError, knn_loo_score, logme, rank_average

__all__ = [
    "Candidate",
    "CandidateError",
    "CandidateResult",
    "FeatureExtractor",
    "Recommendation",
    "RecommendationError",
    "ScoreInputError",
    "knn_loo_score",
    "logme",
    "parse_candidate",
    "parse_candidates",
    "rank_average",
    "recommend_backbones",
    "sample_folder",
]
