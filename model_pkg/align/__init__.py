"""Embedding-space alignment: map one embedder's vectors into another's space without paired data."""

from .configuration_mini_vec2vec import MiniVec2VecConfig
from .modeling_mini_vec2vec import AlignerNotFittedError, MiniVec2VecAligner

__all__ = ["AlignerNotFittedError", "MiniVec2VecAligner", "MiniVec2VecConfig"]
