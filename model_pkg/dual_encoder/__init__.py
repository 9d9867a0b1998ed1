from .configuration_dual_encoder import DualEncoderConfig, DualEncoderTextConfig, DualEncoderVisionConfig
from .modeling_dual_encoder import DualEncoderModel, DualEncoderOutput, DualEncoderPreTrainedModel
from .tokenization import WordTokenizer, build_vocab
from .towers import TextTowerError

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
