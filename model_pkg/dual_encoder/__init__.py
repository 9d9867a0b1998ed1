from .configuration_dual_encoder import DualEncoderConfig, DualEncoderTextConfig, DualEncoderVisionConfig
from .modeling_dual_encoder import (
    DualEncoderModel,
    DualEncoderOutput,
    DualEncoderPreTrainedModel,
    TextTowerError,
    WordTokenizer,
    build_vocab,
)

__all__ = [
    "DualEncoderConfig",
    "DualEncoderModel",
    "DualEncoderOutput",
    "DualEncoderPreTrainedModel",
    "DualEncoderTextConfig",
    "DualEncoderVisionConfig",
    "TextTowerError",
    "WordTokenizer",
    "build_vocab",
]
