"""ArcFace identity embedder: one photo -> an L2-normalised embedding; same dog = nearby embeddings.

backbone -> pooled feature (D) -> Dropout -> Linear(D, E) -> BatchNorm1d(E) -> L2 normalisation -> (E,)

Training adds an ArcFace margin head (one learned centre per training dog, `losses.ArcFaceHead`):
the loss pushes each embedding to within an angular margin of its own dog's centre. The head only
serves training; identification compares embeddings (cosine) through a gallery (`gallery.GalleryIndex`).

Why BatchNorm before the L2 normalisation (the ArcFace paper's "BN-Dropout-FC-BN" output block, the
"BNNeck" of re-identification): the projection's raw outputs share a large common component, so after
normalisation they would crowd into a small cap of the sphere and cosines between different dogs would
all be high. BatchNorm centres and rescales each dimension over the batch, spreading embeddings over
the whole sphere where the angular margin can separate them; at inference it is a fixed affine map.
The backbone's pooled feature is post-ReLU (all >= 0), which makes that crowding worse without it.

The frozen-backbone phase trains on cached pooled features (`pooled_features` (B, D)) instead of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..losses import ArcFaceHead
from ..modeling_utils import BackboneModelMixin
from .configuration_arcface import ArcFaceEmbedderConfig

__all__ = ["ArcFaceEmbedderModel", "ArcFaceEmbedderPreTrainedModel", "ArcFaceOutput"]


@dataclass
class ArcFaceOutput(ModelOutput):
    """
    Args:
        loss: (1,) ArcFace loss (cross-entropy of the margin logits), when `labels` are given.
        logits: (B, C) `scale * cos` to each training identity's centre, without margin; None when the
            model has no margin head (`num_classes=0`).
        embeddings: (B, E) L2-normalised identity embeddings.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


class ArcFaceEmbedderPreTrainedModel(PreTrainedModel):
    config_class = ArcFaceEmbedderConfig
    base_model_prefix = "arcface_embedder"
    main_input_name = "pixel_values"
    # `forward` takes **kwargs only to ignore extra batch keys: HF Trainer must still average the loss
    # over gradient-accumulation steps itself (it would not if it thought forward took loss kwargs).
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module):
        # Only our own layers: the backbone keeps timm's init or its pretrained weights, loaded after post_init.
        if getattr(module, "_is_backbone", False):
            return
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            if module.running_mean is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        elif isinstance(module, ArcFaceHead):
            nn.init.normal_(module.weight, std=0.01)  # only directions matter: the head normalises its rows


class ArcFaceEmbedderModel(BackboneModelMixin, ArcFaceEmbedderPreTrainedModel):
    """Photos (B, 3, H, W), or cached pooled backbone features (B, D) -> embeddings (B, E), plus the
    ArcFace loss when `labels` (B,) (training identity indices) are given."""

    def __init__(self, config: ArcFaceEmbedderConfig):
        super().__init__(config)
        self.init_backbone()
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(self.backbone.token_dim, config.embedding_size)
        self.bn = nn.BatchNorm1d(config.embedding_size)
        self.margin_head = (
            ArcFaceHead(config.embedding_size, config.num_classes, config.margin, config.scale, config.easy_margin)
            if config.num_classes > 0
            else None
        )
        self.post_init()
        self.finish_backbone()


    def set_margin(self, margin: float):
        """Set the margin head's runtime margin (the margin schedule); `config.margin` stays the target."""
        if self.margin_head is None:
            raise ValueError("This embedder has no margin head (num_classes=0).")
        self.margin_head.margin = margin

    # -- encoding ------------------------------------------------------------------------------
    def pool_photos(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) photos -> the backbone's pooled features (B, D)."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, 3, height, width); got shape {tuple(pixel_values.shape)}. "
                "For a single photo add a batch dimension with .unsqueeze(0)."
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
            return self.backbone.pool(self.backbone.forward_features(pixel_values))

    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, pooled_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Photos (B, 3, H, W) or cached pooled backbone features (B, D) -> L2-normalised embeddings (B, E)."""
        if pooled_features is None:
            if pixel_values is None:
                raise ValueError("Give pixel_values (B, 3, H, W) or pooled_features (B, D).")
            pooled_features = self.pool_photos(pixel_values)
        elif pooled_features.ndim != 2 or pooled_features.shape[-1] != self.proj.in_features:
            raise ValueError(
                f"pooled_features must be (batch, {self.proj.in_features}); got shape {tuple(pooled_features.shape)}."
            )
        x = self.proj(self.dropout(pooled_features.to(self.proj.weight.dtype)))  # (B, E)
        return F.normalize(self.bn(x), dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pooled_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ArcFaceOutput:
        """
        Args:
            pixel_values: (B, 3, H, W) photos, or give `pooled_features`.
            pooled_features: (B, D) cached pooled backbone features (the frozen phase).
            labels: (B,) training identity indices in [0, num_classes).
        """
        embeddings = self.get_image_features(pixel_values, pooled_features)
        loss = logits = None
        if self.margin_head is not None:
            if labels is not None and (labels.min() < 0 or labels.max() >= self.config.num_classes):
                raise ValueError(
                    f"labels must be training identity indices in [0, {self.config.num_classes}); "
                    f"got values from {int(labels.min())} to {int(labels.max())}."
                )
            loss, logits = self.margin_head(embeddings, labels)
        elif labels is not None:
            raise ValueError("This embedder has no margin head (num_classes=0), so it cannot compute a loss.")
        return ArcFaceOutput(loss=loss, logits=logits, embeddings=embeddings)
