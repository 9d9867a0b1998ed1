"""Set-vs-set pair matcher: do two sets of photos show the same individual animal?

shared backbone tokens -> projection -> set pooling (mean / attention / cls_mean, masks for sets of
different sizes) -> reasoning head (concat-MLP / cross-attention / siamese) -> same/different logit.

The output does not depend on the order of photos in a set, nor on padding: every reduction over
photos is a masked mean or masked attention, and padded photos never reach the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..losses import pair_bce_loss
from ..modeling_utils import BackboneModelMixin
from .configuration_pair_matcher import PairMatcherConfig
from .snorm import PhotoSet, adaptive_snorm, masked_mean

__all__ = ["PairMatcherModel", "PairMatcherOutput", "PairMatcherPreTrainedModel", "SetPooling", "SetEncoding"]


class EmptySetError(ValueError):
    """A set has no photos."""


@dataclass
class PairMatcherOutput(ModelOutput):
    """
    Args:
        loss: (1,) BCE loss, when `labels` are given.
        logits: (B,) same-animal logits; `sigmoid(logits)` is the probability.
        embeds_a: (B, H) set embedding of side A.
        embeds_b: (B, H) set embedding of side B.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    embeds_a: torch.Tensor | None = None
    embeds_b: torch.Tensor | None = None


@dataclass
class SetEncoding:
    """tokens: (B, N*T, H) projected tokens of all photos; token_mask: (B, N*T) True where real;
    embeds: (B, H) the pooled set vector; photo_embeds: (B, N, H) each photo's vector, photo_mask: (B, N)."""

    tokens: torch.Tensor
    token_mask: torch.Tensor
    embeds: torch.Tensor
    photo_embeds: torch.Tensor | None = None
    photo_mask: torch.Tensor | None = None


class SetPooling(nn.Module):
    """Pools a set of photos' tokens into one vector; invariant to photo order and padding."""

    def __init__(self, config: PairMatcherConfig):
        super().__init__()
        self.mode = config.set_pooling
        if self.mode == "attention":
            self.query = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
            self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
            self.norm = nn.LayerNorm(config.hidden_size)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, photo_embeds: torch.Tensor, photo_mask: torch.Tensor):
        """tokens (B, N*T, H), token_mask (B, N*T), photo_embeds (B, N, H), photo_mask (B, N) -> (B, H)."""
        if self.mode == "mean":
            return masked_mean(tokens, token_mask)
        if self.mode == "cls_mean":
            return masked_mean(photo_embeds, photo_mask)
        return self.attend(tokens, token_mask)

    def attend(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Learned-query attention pooling: tokens (B, L, H), token_mask (B, L) -> (B, H)."""
        query = self.query.expand(tokens.shape[0], -1, -1)  # (B, 1, H)
        pooled, _ = self.attention(query, tokens, tokens, key_padding_mask=~token_mask, need_weights=False)
        return self.norm(pooled.squeeze(1) + masked_mean(tokens, token_mask))


class L2Norm(nn.Module):
    """Unit-length vectors along the last dimension (`photo_norm="l2"`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class ConcatMLPHead(nn.Module):
    """MLP on [a; b; |a-b|; a*b] -> logit."""

    def __init__(self, config: PairMatcherConfig, num_features: int = 4):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_features * config.hidden_size, config.mlp_hidden_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.mlp_hidden_size, 1),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([a, b, (a - b).abs(), a * b], dim=-1)).squeeze(-1)


class SiameseHead(nn.Module):
    """A symmetric distance between set vectors: scaled cosine + bias, or an MLP on [|a-b|; a*b]."""

    def __init__(self, config: PairMatcherConfig):
        super().__init__()
        self.distance = config.siamese_distance
        if self.distance == "cosine":
            # cos = 0.5 -> logit 0 at init; both learned.
            self.scale = nn.Parameter(torch.tensor(10.0))
            self.bias = nn.Parameter(torch.tensor(-5.0))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(2 * config.hidden_size, config.mlp_hidden_size),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.mlp_hidden_size, 1),
            )

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        cohort: torch.Tensor | None = None,
        top_k: int = 50,
        photos_a: PhotoSet | None = None,
        photos_b: PhotoSet | None = None,
    ) -> torch.Tensor:
        """a, b (B, H) set vectors -> logits (B,); with `cohort` (C, H), unit rows, the cosine is s-normed
        (`adaptive_snorm`; `photos_a` / `photos_b`: each side's photos, for `cohort_stats="photos"`)."""
        if self.distance == "cosine":
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
            score = (a * b).sum(-1)
            if cohort is not None:
                score = adaptive_snorm(score, a, b, cohort, top_k, photos_a, photos_b)
            return self.scale * score + self.bias
        return self.mlp(torch.cat([(a - b).abs(), a * b], dim=-1)).squeeze(-1)


class CrossAttentionHead(nn.Module):
    """Each set's tokens attend to the other set's tokens (shared weights), then concat-MLP."""

    def __init__(self, config: PairMatcherConfig):
        super().__init__()
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.mlp = ConcatMLPHead(config)

    def attend(self, x: SetEncoding, other: SetEncoding, pool=masked_mean) -> torch.Tensor:
        out, _ = self.attention(x.tokens, other.tokens, other.tokens, key_padding_mask=~other.token_mask, need_weights=False)
        return pool(self.norm(x.tokens + out), x.token_mask)  # (B, H)

    def forward(self, a: SetEncoding, b: SetEncoding, pool=masked_mean) -> torch.Tensor:
        """`pool(tokens, token_mask) -> (B, H)` reduces the cross-attended tokens (masked mean by default)."""
        return self.mlp(self.attend(a, b, pool), self.attend(b, a, pool))


class PairMatcherPreTrainedModel(PreTrainedModel):
    config_class = PairMatcherConfig
    base_model_prefix = "pair_matcher"
    # forward(**kwargs) would make Trainer think the loss handles gradient accumulation itself; it does not.
    accepts_loss_kwargs = False
    main_input_name = "pixel_values_a"

    def _init_weights(self, module: nn.Module):
        # Only our own layers: the backbone keeps timm's init or its pretrained weights, loaded after post_init.
        if isinstance(module, nn.Linear) and not getattr(module, "_is_backbone", False):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and not getattr(module, "_is_backbone", False):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class PairMatcherModel(BackboneModelMixin, PairMatcherPreTrainedModel):
    """Two sets of photos (B, N, 3, H, W) + (B, M, 3, H, W) with masks -> same-animal logit (B,).

    Either side can be given as cached backbone tokens (`tokens_a`: (B, N, T, D)) instead of pixels,
    which is how the frozen-backbone phase trains fast.
    """

    cohort: torch.Tensor  # (cohort_size, hidden_size) buffer, only with `config.score_norm`

    def __init__(self, config: PairMatcherConfig):
        super().__init__(config)
        self.init_backbone()
        self.token_proj = nn.Linear(self.backbone.token_dim, config.hidden_size)
        self.token_norm = nn.LayerNorm(config.hidden_size) if config.photo_norm == "layer" else L2Norm()
        self.set_pooling = SetPooling(config)
        self.head: nn.Module
        if config.head == "concat_mlp":
            self.head = ConcatMLPHead(config)
        elif config.head == "siamese":
            self.head = SiameseHead(config)
        else:
            self.head = CrossAttentionHead(config)
        if config.score_norm is not None:  # the cohort travels with the weights (model.safetensors)
            self.register_buffer("cohort", torch.zeros(config.cohort_size, config.hidden_size))
        self.post_init()
        self.finish_backbone()

    @classmethod
    @torch.no_grad()
    def from_embedder(cls, embedder, cohort: torch.Tensor | None = None, **overrides) -> PairMatcherModel:
        """A matcher that scores sets with a trained ArcFace embedder: the same backbone, the embedder's
        projection with its (eval-mode) BatchNorm folded in, L2-normalised photo embeddings, the mean of a
        set's photo embeddings, and a scaled cosine between the two set vectors (`head="siamese"`).
        The probability is monotone in that cosine; `scale`/`bias` and the thresholds are then chosen on
        validation pairs (`pair_matcher.calibration.calibrate_embedder_matcher`). With `cohort` (C, E), one
        embedding per cohort identity (e.g. training dogs), the cosine is s-normed against it (`score_norm`)."""
        ecfg = embedder.config
        if cohort is not None:
            overrides = {"score_norm": "asnorm", "cohort_size": len(cohort), **overrides}
        config = PairMatcherConfig(
            **{
                "backbone": ecfg.backbone,
                "backbone_pretrained": False,
                "backbone_weights_source": ecfg.backbone_weights_source,
                "image_size": ecfg.image_size,
                "hidden_size": ecfg.embedding_size,
                "set_pooling": "cls_mean",
                "head": "siamese",
                "siamese_distance": "cosine",
                "photo_norm": "l2",
                "freeze_backbone_bn": ecfg.freeze_backbone_bn,
                "tta_flip": getattr(ecfg, "tta_flip", False),
                **overrides,
            }
        )
        model = cls(config)
        model.backbone.load_state_dict(embedder.backbone.state_dict())
        bn = embedder.bn
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # BatchNorm in eval mode is an affine map
        model.token_proj.weight.copy_(embedder.proj.weight * gain[:, None])
        model.token_proj.bias.copy_((embedder.proj.bias - bn.running_mean) * gain + bn.bias)
        if cohort is not None:
            model.cohort.copy_(F.normalize(torch.as_tensor(cohort, dtype=model.cohort.dtype), dim=-1))
        return model

    def decision_threshold(self, set_size_a: int, set_size_b: int) -> float:
        """The validation-chosen threshold for a pair of sets of these sizes (see `set_size_thresholds`)."""
        by_size = {int(k): v for k, v in (self.config.set_size_thresholds or {}).items()}
        smaller = min(set_size_a, set_size_b)
        usable = [k for k in by_size if k <= smaller]
        return float(by_size[max(usable)]) if usable else float(self.config.threshold)

    # -- encoding ------------------------------------------------------------------------------
    def embed_photos(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(P, 3, H, W) real photos -> backbone tokens (P, T, D)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
            return self.backbone.forward_features(pixel_values)

    def photo_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(P, 3, H, W) photos -> (P, H) L2-normalised photo embeddings (for a matcher built from an embedder, the
        embedder's own), as `match_sets` compares them photo by photo."""
        photos = self.token_norm(self.token_proj(self.backbone.pool(self.embed_photos(pixel_values))))
        return F.normalize(photos, dim=-1)

    @torch.no_grad()
    def score_photo_embeddings(self, photos_a: torch.Tensor, photos_b: torch.Tensor) -> float:
        """The matcher's logit for two sets given as photo embeddings (N, H) and (M, H) (`photo_embeddings`), for a
        matcher whose set vector is the mean of its photos' (`set_pooling="cls_mean"`, as `from_embedder` builds):
        the same score `forward` gives their photos, without running the backbone again."""
        if self.config.set_pooling != "cls_mean" or self.config.head == "cross_attention":
            raise ValueError("score_photo_embeddings needs set_pooling='cls_mean' and a head on set vectors.")
        sets = []
        for photos in (photos_a, photos_b):
            photos = photos.to(self.token_proj.weight.dtype)[None]  # (1, N, H)
            mask = torch.ones(photos.shape[:2], dtype=torch.bool)
            sets.append(SetEncoding(tokens=photos, token_mask=mask, embeds=photos.mean(1), photo_embeds=photos, photo_mask=mask))
        return float(self.forward_head(sets[0], sets[1])[0])

    def _photo_tokens(self, pixel_values, tokens, mask, side: str) -> torch.Tensor:
        """Backbone tokens (B, N, T, D) of a set, running the backbone on real photos only."""
        if tokens is not None:
            return tokens.to(self.token_proj.weight.dtype)
        if pixel_values is None:
            raise ValueError(f"Give pixel_values_{side} (B, N, 3, H, W) or tokens_{side} (B, N, T, D) for side {side.upper()}.")
        if pixel_values.ndim != 5:
            raise ValueError(
                f"pixel_values_{side} must be (batch, set_size, 3, height, width); got shape {tuple(pixel_values.shape)}. "
                "For a single set add a batch dimension with .unsqueeze(0)."
            )
        b, n = pixel_values.shape[:2]
        flat_mask = mask.reshape(-1)
        real = self.embed_photos(pixel_values.reshape(b * n, *pixel_values.shape[2:])[flat_mask])  # (P, T, D)
        out = real.new_zeros(b * n, *real.shape[1:])
        out[flat_mask] = real
        return out.reshape(b, n, *real.shape[1:])

    def encode_set(self, pixel_values=None, mask=None, tokens=None, side: str = "a") -> SetEncoding:
        """One side's photos -> projected tokens, token mask and set vector."""
        source = tokens if tokens is not None else pixel_values
        if source is None:
            raise ValueError(f"Give pixel_values_{side} or tokens_{side}.")
        b, n = source.shape[:2]
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=source.device)
        mask = mask.to(torch.bool)
        empty = (~mask.any(1)).nonzero().flatten().tolist()
        if empty:
            raise EmptySetError(f"Set {side.upper()} of example(s) {empty} has no photos: give at least one photo per side.")
        raw = self._photo_tokens(pixel_values, tokens, mask, side)  # (B, N, T, D)
        t = raw.shape[2]
        proj = self.token_norm(self.token_proj(raw))  # (B, N, T, H)
        pooled = self.backbone.pool(raw.reshape(b * n, t, -1))  # (B*N, D)
        photo_embeds = self.token_norm(self.token_proj(pooled)).reshape(b, n, -1)  # (B, N, H)
        token_mask = mask.unsqueeze(-1).expand(b, n, t).reshape(b, n * t)  # (B, N*T)
        proj = proj.reshape(b, n * t, -1)
        embeds = self.set_pooling(proj, token_mask, photo_embeds, mask)
        return SetEncoding(tokens=proj, token_mask=token_mask, embeds=embeds, photo_embeds=photo_embeds, photo_mask=mask)

    def forward_head(self, a: SetEncoding, b: SetEncoding) -> torch.Tensor:
        if isinstance(self.head, CrossAttentionHead):
            # Attention set pooling also pools the cross-attended tokens, so its weights shape (and
            # learn from) the logit; mean / cls_mean have no weights and keep the masked mean.
            pool = self.set_pooling.attend if self.set_pooling.mode == "attention" else masked_mean
            return self.head(a, b, pool)
        if self.config.score_norm is not None:
            photos = self.config.cohort_stats == "photos"
            return self.head(
                a.embeds,
                b.embeds,
                cohort=F.normalize(self.cohort, dim=-1),
                top_k=self.config.cohort_top_k,
                photos_a=(a.photo_embeds, a.photo_mask) if photos else None,
                photos_b=(b.photo_embeds, b.photo_mask) if photos else None,
            )
        return self.head(a.embeds, b.embeds)

    def forward(
        self,
        pixel_values_a: torch.Tensor | None = None,
        mask_a: torch.Tensor | None = None,
        pixel_values_b: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
        tokens_a: torch.Tensor | None = None,
        tokens_b: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PairMatcherOutput:
        """
        Args:
            pixel_values_a: (B, N, 3, H, W) photos of set A (padded), or give `tokens_a` (B, N, T, D).
            mask_a: (B, N) True for real photos; all True when omitted.
            pixel_values_b, mask_b, tokens_b: the same for set B (M photos).
            labels: (B,) 1 = same animal, 0 = different.
        """
        enc_a = self.encode_set(pixel_values_a, mask_a, tokens_a, side="a")
        enc_b = self.encode_set(pixel_values_b, mask_b, tokens_b, side="b")
        logits = self.forward_head(enc_a, enc_b)
        loss = pair_bce_loss(logits, labels, self.config.pos_weight) if labels is not None else None
        return PairMatcherOutput(loss=loss, logits=logits, embeds_a=enc_a.embeds, embeds_b=enc_b.embeds)

    @torch.no_grad()
    def predict_proba(
        self, pixel_values_a=None, mask_a=None, pixel_values_b=None, mask_b=None, tokens_a=None, tokens_b=None
    ) -> torch.Tensor:
        """Probability (B,) that each pair of sets shows the same animal; compare with `config.threshold`."""
        was_training = self.training
        self.eval()
        try:
            out = self(pixel_values_a, mask_a, pixel_values_b, mask_b, tokens_a=tokens_a, tokens_b=tokens_b)
        finally:
            self.train(was_training)
        return torch.sigmoid(out.logits)
