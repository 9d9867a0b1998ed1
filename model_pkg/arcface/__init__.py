from .configuration_arcface import ArcFaceEmbedderConfig
from .modeling_arcface import ArcFaceEmbedderModel, ArcFaceEmbedderPreTrainedModel, ArcFaceOutput

__all__ = ["ArcFaceEmbedderConfig", "ArcFaceEmbedderModel", "ArcFaceEmbedderPreTrainedModel", "ArcFaceOutput"]
