from .configuration_pair_matcher import PairMatcherConfig
from .modeling_pair_matcher import PairMatcherModel, PairMatcherOutput, PairMatcherPreTrainedModel, SetPooling

__all__ = ["PairMatcherConfig", "PairMatcherModel", "PairMatcherOutput", "PairMatcherPreTrainedModel", "SetPooling"]
