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
The CPU fine-tuning recipe (`config.activation_stage`) trains the last backbone stages on cached
activations of the frozen early stages (`activations` (B, C, h, w)), one cached map per augmented view.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        embeddings: (B, E) L2-normalised identity embeddings. Before `logits`, so that without labels they are
            the output's first item (`output[0]`): what transformers' "image-feature-extraction" pipeline returns.
        logits: (B, C) `scale * cos` to each training identity's centre, without margin; None when the
            model has no margin head (`num_classes=0`).
    """

    loss: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    logits: torch.Tensor | None = None


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
            if module.running_mean is not None and module.running_var is not None:
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

    def set_backbone_frozen(self, frozen: bool) -> None:
        """As `BackboneModelMixin.set_backbone_frozen`; with `config.activation_stage`, unfreezing trains
        everything after the cached stem (`Backbone.stem_parameters`), which stays frozen."""
        super().set_backbone_frozen(frozen)
        stage = self.config.activation_stage
        if not frozen and stage is not None:
            stem = {id(p) for p in self.backbone.stem_parameters(stage)}
            for param in self.backbone.parameters():
                param.requires_grad_(id(param) not in stem)

    @torch.no_grad()
    def init_head_from_features(
        self, pooled_features: torch.Tensor, labels: torch.Tensor | Sequence[int], whiten: bool = False
    ) -> dict:
        """Start from the untrained backbone's cosine baseline instead of a random head.

        The projection becomes the top `embedding_size` principal components of `pooled_features` (N, D)
        (centred), BatchNorm keeps their scale (`whiten=False`: the embedding is the centred PCA projection,
        whose cosines rank like the baseline's) or whitens them, and each training identity's ArcFace
        centre is the mean direction of its photos' embeddings. A random head throws the ImageNet
        starting point away: the CPU probe of issue 12 fell from rank-1 .68 to .35 before it relearned.
        Returns the share of variance the kept components hold."""
        if pooled_features.ndim != 2 or pooled_features.shape[1] != self.proj.in_features:
            raise ValueError(
                f"PCA init takes the backbone's pooled features of {self.proj.in_features} dims (N, {self.proj.in_features}); "
                f"got pooled features of {pooled_features.shape[-1]} dims, shape {tuple(pooled_features.shape)}."
            )
        x = pooled_features.double()
        n, d = x.shape
        e = self.config.embedding_size
        if e > min(n, d):
            raise ValueError(f"PCA init needs at least embedding_size={e} photos and feature dims; got {n} photos of {d} dims.")
        mean = x.mean(0)
        _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
        components, variance = vh[:e], singular[:e] ** 2 / max(n - 1, 1)
        self.proj.weight.copy_(components.to(self.proj.weight.dtype))
        self.proj.bias.copy_((-components @ mean).to(self.proj.bias.dtype))
        eps = self.bn.eps
        running_mean, running_var = self.bn.running_mean, self.bn.running_var
        assert running_mean is not None and running_var is not None  # BatchNorm1d tracks running statistics
        running_mean.zero_()
        running_var.copy_(variance.to(running_var.dtype))
        self.bn.weight.copy_((torch.ones_like(variance) if whiten else (variance + eps).sqrt()).to(self.bn.weight.dtype))
        self.bn.bias.zero_()
        self.init_centres_from_features(pooled_features, labels)
        return {"pca_explained_variance": float(variance.sum() / (singular**2 / max(n - 1, 1)).sum())}

    @torch.no_grad()
    def init_centres_from_features(self, pooled_features: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> None:
        """Each training identity's ArcFace centre becomes the mean direction of its photos' embeddings under the
        current projection: a new set of identities starts where the embedding already is (PCA init, or
        fine-tuning a trained embedder on other animals)."""
        if self.margin_head is None:
            return
        was_training = self.training
        self.eval()
        emb = F.normalize(self.bn(self.proj(pooled_features.to(self.proj.weight.dtype))), dim=-1)
        self.train(was_training)
        labels = torch.as_tensor(labels, dtype=torch.long)
        centres = torch.zeros_like(self.margin_head.weight)
        centres.index_add_(0, labels, emb.to(centres.dtype))
        seen = torch.bincount(labels, minlength=centres.shape[0]) > 0
        self.margin_head.weight[seen] = F.normalize(centres[seen], dim=-1)

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

    def pool_activations(self, activations: torch.Tensor) -> torch.Tensor:
        """Cached activations (B, C, h, w) of the frozen stem (`config.activation_stage`) -> pooled features (B, D)."""
        stage = self.config.activation_stage
        if stage is None:
            raise ValueError(
                "This embedder has no activation_stage: give pixel_values or pooled_features instead of activations."
            )
        if activations.ndim != 4:
            raise ValueError(f"activations must be (batch, channels, height, width); got shape {tuple(activations.shape)}.")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
            return self.backbone.forward_from_stage(activations.to(self.proj.weight.dtype), stage)

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        pooled_features: torch.Tensor | None = None,
        activations: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Photos (B, 3, H, W), cached pooled backbone features (B, D) or cached stem activations
        (B, C, h, w) -> L2-normalised embeddings (B, E)."""
        if activations is not None:
            pooled_features = self.pool_activations(activations)
        elif pooled_features is None:
            if pixel_values is None:
                raise ValueError("Give pixel_values (B, 3, H, W), pooled_features (B, D) or activations (B, C, h, w).")
            pooled_features = self.pool_photos(pixel_values)
        elif pooled_features.ndim != 2 or pooled_features.shape[-1] != self.proj.in_features:
            raise ValueError(
                f"pooled_features must be (batch, {self.proj.in_features}); got shape {tuple(pooled_features.shape)}."
            )
        x = self.proj(self.dropout(pooled_features.to(self.proj.weight.dtype)))  # (B, E)
        return F.normalize(self.bn(x), dim=-1)

    def photo_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) photos -> (B, E) L2-normalised identity embeddings; the name the pair matcher shares, so the
        intake's embedding path (`model_pkg.intake.embed_photos`) serves both."""
        return self.get_image_features(pixel_values=pixel_values)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pooled_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        activations: torch.Tensor | None = None,
        **kwargs,
    ) -> ArcFaceOutput:
        """
        Args:
            pixel_values: (B, 3, H, W) photos, or give `pooled_features` or `activations`.
            pooled_features: (B, D) cached pooled backbone features (the frozen phase).
            activations: (B, C, h, w) cached activations of the frozen stem (`config.activation_stage`).
            labels: (B,) training identity indices in [0, num_classes).
        """
        embeddings = self.get_image_features(pixel_values, pooled_features, activations)
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
        return ArcFaceOutput(loss=loss, embeddings=embeddings, logits=logits)
