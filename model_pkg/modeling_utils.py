"""What every petmatch model with an image backbone shares: building it, loading its pretrained
weights after `post_init`, freezing it (whole or all but its last layer groups), keeping its BatchNorm
statistics fixed, and saving so that loading needs neither network nor weight package.

A model mixes `BackboneModelMixin` in before its `PreTrainedModel` base; its config carries `backbone`,
`backbone_pretrained`, `backbone_checkpoint_path`, `backbone_weights_source`, `image_size`,
`freeze_backbone`, `backbone_trainable_groups`, `freeze_backbone_bn` and `tta_flip`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.models import group_parameters
from torch import nn

from .backbones import Backbone, create_backbone
from .fileio import update_with_weights
from .onnx_runtime import attach_exported

__all__ = ["BackboneModelMixin", "IDENTITY_IGNORED_CONFIG_KEYS", "UntrustedModelError", "check_model_folder", "model_identity"]

# Weight files that are Python pickles: loading one can run code, so petmatch never loads them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UntrustedModelError(ValueError):
    """A model folder that petmatch refuses to load: it could run code, or its weights are damaged."""


def check_model_folder(folder: str | os.PathLike) -> None:
    """The loading policy for model folders from anyone: refuse, before anything is deserialised,

    * weights only as pickles (`pytorch_model.bin`, `.pt`, ...): unpickling can execute code;
    * a config that asks for code from the folder (`auto_map`, i.e. `trust_remote_code`);
    * `*.safetensors` files whose header or length is damaged or tampered with.

    petmatch models are saved as safetensors and their classes ship with the package, so a genuine folder
    passes. Raises `UntrustedModelError` with what was found and what to do."""
    from safetensors import safe_open

    path = Path(folder)
    files = sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    tensors = [name for name in files if name.endswith(".safetensors")]
    pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    if pickles and not tensors:
        raise UntrustedModelError(
            f"{str(path)!r} holds its weights only as pickle files ({', '.join(pickles)}), which can run code when loaded: "
            "petmatch loads safetensors only. If you trust the folder's author, convert it once with "
            "`model.save_pretrained(folder)` (which writes model.safetensors) and remove the pickle files."
        )
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UntrustedModelError(f"{str(config_file)!r} is not a valid JSON config ({err}).") from err
        if isinstance(config, dict) and config.get("auto_map"):
            raise UntrustedModelError(
                f"{str(config_file)!r} asks to run Python code shipped with the model (auto_map: "
                f"{sorted(config['auto_map'])}): petmatch never executes code from a model folder. Use a petmatch model "
                "(its classes come with the package)."
            )
    for name in tensors:
        try:
            with safe_open(str(path / name), framework="pt") as fh:
                fh.keys()
        except Exception as err:  # safetensors raises its own error types for bad headers and short files
            raise UntrustedModelError(
                f"{str(path / name)!r} is damaged or has been tampered with ({type(err).__name__}: {err}): download or "
                "copy the model folder again."
            ) from err


# Config keys that never change the vectors a model computes: where the model or its parts were loaded
# from (differs between machines, virtual environments, Spaces), library versions, how it was built or
# trained, and thresholds that only turn scores into decisions. Everything else in the config, with the
# weights, is the model's identity.
IDENTITY_IGNORED_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "model_name_or_path",
        "_commit_hash",
        "transformers_version",
        "architectures",
        "auto_map",
        "torch_dtype",
        "dtype",
        "backbone_checkpoint_path",
        "backbone_weights_source",
        "weights_source",
        "backbone_pretrained",
        "freeze_backbone",
        "backbone_trainable_groups",
        "freeze_backbone_bn",
        "freeze_text_tower",
        "text_trainable_layers",
        "initializer_range",
        "use_cache",
        "score_threshold",
        "margin_threshold",
        "gallery_score_threshold",
        "gallery_margin_threshold",
        "gallery_k",
        "gallery_per_id",
        "threshold",
        "set_size_thresholds",
        "loss",
        "loss_margin",
    }
)


def _identity_config(value: Any) -> Any:
    """The config (nested dicts included) without the keys in `IDENTITY_IGNORED_CONFIG_KEYS`."""
    if isinstance(value, dict):
        return {k: _identity_config(v) for k, v in sorted(value.items()) if k not in IDENTITY_IGNORED_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_identity_config(v) for v in value]
    return value


def model_identity(model: torch.nn.Module) -> str:
    """`<model_type>:<16 hex>`, a hash of the weights and of the config fields that change what the model
    computes; paths, versions and decision thresholds are left out (`IDENTITY_IGNORED_CONFIG_KEYS`).

    Galleries and text indexes record it and refuse vectors of another model. The same weights loaded
    from another folder, another machine or another transformers version have the same identity; weights
    stored in float16 and loaded in float32 too (tensors are hashed as float32)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(_identity_config(config.to_dict()), sort_keys=True, default=str).encode())
    update_with_weights(digest, model.state_dict())
    return f"{getattr(config, 'model_type', None) or type(model).__name__}:{digest.hexdigest()[:16]}"


if TYPE_CHECKING:  # the mixin always comes before a PreTrainedModel base, which has config, train, save_pretrained
    from transformers import PreTrainedModel as _MixinBase
else:
    _MixinBase = object


def load_pretrained_backbone(backbone: Backbone, config: Any) -> None:
    """Copy the pretrained weights of `config.backbone` (offline package, `config.backbone_checkpoint_path` or the
    Hub) into `backbone`, built from the same config, and record where they came from in the config."""
    source = create_backbone(
        config.backbone,
        pretrained=True,
        image_size=config.image_size,
        checkpoint_path=config.backbone_checkpoint_path,
    )
    backbone.load_state_dict(source.state_dict())
    config.backbone_weights_source = source.weights_source


class BackboneModelMixin(_MixinBase):
    backbone: Backbone

    def init_backbone(self) -> None:
        """Build `self.backbone` with random weights; `finish_backbone` loads pretrained ones after post_init."""
        self.backbone = create_backbone(self.config.backbone, pretrained=False, image_size=self.config.image_size)
        for module in self.backbone.modules():
            setattr(module, "_is_backbone", True)  # noqa: B010  (`_init_weights` leaves these to timm / the pretrained weights)
        self.set_tta_flip(getattr(self.config, "tta_flip", False))

    def set_tta_flip(self, enabled: bool) -> None:
        """Flip test-time augmentation: at inference each photo counts with its mirror image
        (`Backbone.forward_features`). Stored in the config, so a saved model keeps it."""
        self.config.tta_flip = bool(enabled)
        self.backbone.tta_flip = bool(enabled)

    def finish_backbone(self) -> None:
        """Call at the end of `__init__`, after `post_init()`, so weight init cannot overwrite pretrained weights."""
        if self.config.backbone_pretrained:
            self.load_backbone_weights()
        self.set_backbone_frozen(self.config.freeze_backbone)

    def load_backbone_weights(self) -> None:
        """Load the backbone's pretrained weights (offline package, checkpoint file or Hub)."""
        load_pretrained_backbone(self.backbone, self.config)

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Frozen: no gradients to the backbone and it runs in eval mode. Unfrozen: the last
        `config.backbone_trainable_groups` layer groups (timm's `group_matcher`) train, or all of them."""
        self.config.freeze_backbone = frozen
        groups = group_parameters(self.backbone.model, self.backbone.model.group_matcher(coarse=True))
        ordered = [group for _, group in sorted(groups.items())]
        trainable = {name for group in ordered for name in group}
        if self.config.backbone_trainable_groups is not None:
            n = self.config.backbone_trainable_groups  # 0 trains none (ordered[-0:] would be all)
            kept = ordered[len(ordered) - n :] if n > 0 else []
            trainable = {name for group in kept for name in group}
        for name, param in self.backbone.model.named_parameters():
            param.requires_grad_(not frozen and name in trainable)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        elif mode and self.config.freeze_backbone_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, use_onnx: bool = True, **kwargs):
        """`from_pretrained`; then, with `use_onnx` and an export in `<folder>/onnx/` (`python -m model_pkg.export
        onnx`), ONNX Runtime computes the backbone at inference when onnxruntime is installed (`model_pkg.onnx_runtime`)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info=True
        if use_onnx and os.path.isdir(os.fspath(pretrained_model_name_or_path)):
            attach_exported(model, pretrained_model_name_or_path)
        return loaded

    def save_pretrained(self, save_directory, *args, weights_dtype: torch.dtype | None = None, **kwargs):
        """`save_pretrained`, plus `weights_dtype=torch.float16` to store half-size weights while the
        config keeps float32, so `from_pretrained` computes in float32 (fp16 convolutions are slow on CPUs)."""
        if weights_dtype is not None:
            kwargs["state_dict"] = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in self.state_dict().items()}
        # The saved safetensors hold the backbone weights: loading must not fetch them again.
        pretrained = self.config.backbone_pretrained
        self.config.backbone_pretrained = False
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.backbone_pretrained = pretrained

    @property
    def data_config(self) -> dict:
        return self.backbone.data_config
