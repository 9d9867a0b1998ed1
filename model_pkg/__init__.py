"""petmatch: is this the same animal? Set-vs-set matching, identity embeddings, text search."""

from transformers import AutoConfig, AutoModel

from .arcface import ArcFaceEmbedderConfig, ArcFaceEmbedderModel, ArcFaceOutput
from .dual_encoder import DualEncoderConfig, DualEncoderModel, DualEncoderOutput
from .pair_matcher import PairMatcherConfig, PairMatcherModel, PairMatcherOutput

AutoConfig.register(PairMatcherConfig.model_type, PairMatcherConfig)
AutoModel.register(PairMatcherConfig, PairMatcherModel)
AutoConfig.register(ArcFaceEmbedderConfig.model_type, ArcFaceEmbedderConfig)
AutoModel.register(ArcFaceEmbedderConfig, ArcFaceEmbedderModel)
AutoConfig.register(DualEncoderConfig.model_type, DualEncoderConfig)
AutoModel.register(DualEncoderConfig, DualEncoderModel)

__all__ = [
    "ArcFaceEmbedderConfig",
    "ArcFaceEmbedderModel",
    "ArcFaceOutput",
    "DualEncoderConfig",
    "DualEncoderModel",
    "DualEncoderOutput",
    "PairMatcherConfig",
    "PairMatcherModel",
    "PairMatcherOutput",
]
__version__ = "0.1.0"
