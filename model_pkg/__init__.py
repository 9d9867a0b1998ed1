"""petmatch: is this the same animal? Set-vs-set matching, identity embeddings, text search."""

from transformers import AutoConfig, AutoModel

from .align import MiniVec2VecAligner, MiniVec2VecConfig
from .arcface import ArcFaceEmbedderConfig, ArcFaceEmbedderModel, ArcFaceOutput
from .dual_encoder import DualEncoderConfig, DualEncoderModel, DualEncoderOutput
from .pair_matcher import PairMatcherConfig, PairMatcherModel, PairMatcherOutput

AutoConfig.register(PairMatcherConfig.model_type, PairMatcherConfig)
AutoModel.register(PairMatcherConfig, PairMatcherModel)
AutoConfig.register(ArcFaceEmbedderConfig.model_type, ArcFaceEmbedderConfig)
AutoModel.register(ArcFaceEmbedderConfig, ArcFaceEmbedderModel)
AutoConfig.register(DualEncoderConfig.model_type, DualEncoderConfig)
AutoModel.register(DualEncoderConfig, DualEncoderModel)
AutoConfig.register(MiniVec2VecConfig.model_type, MiniVec2VecConfig)  # the aligner is no nn.Module: no AutoModel

__all__ = [
    "ArcFaceEmbedderConfig",
    "ArcFaceEmbedderModel",
    "ArcFaceOutput",
    "DualEncoderConfig",
    "DualEncoderModel",
    "DualEncoderOutput",
    "MiniVec2VecAligner",
    "MiniVec2VecConfig",
    "PairMatcherConfig",
    "PairMatcherModel",
    "PairMatcherOutput",
]
__version__ = "0.1.0"
