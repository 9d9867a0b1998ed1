"""petmatch: is this the same animal? Set-vs-set matching, identity embeddings, text search."""

from transformers import AutoConfig, AutoModel

from .pair_matcher import PairMatcherConfig, PairMatcherModel, PairMatcherOutput

AutoConfig.register(PairMatcherConfig.model_type, PairMatcherConfig)
AutoModel.register(PairMatcherConfig, PairMatcherModel)

__all__ = ["PairMatcherConfig", "PairMatcherModel", "PairMatcherOutput"]
__version__ = "0.1.0"
