"""Candidate backbones for recommendation: parse `NAME[@SIZE][:LAYER]` specs and embed photos with them.

A candidate is either
* any timm model the backbone factory builds (`model_pkg.backbones.create_backbone`, pretrained
  weights), e.g. `tf_efficientnet_lite0@224:pooled`, `tf_efficientnet_lite2@260:stage5`; or
* a saved petmatch model folder (anything with a `config.json` that `AutoModel` loads and that has a
  `backbone`), e.g. `models/pair-matcher`, `runs/arcface/checkpoint-500@192:stage5`.

`SIZE` is the square input side in pixels (default: the model's own). `LAYER` is one of the backbone's
`layer_names` (`pooled`, `tokens`, `stage<N>`; every layer global-average-pooled), or `embedding` for saved
models that have `get_image_features` (the ArcFace embedder); the default is `embedding` where it
exists, else `pooled`. Candidates that share a model and size share one forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backbones import Backbone, check_backbone_name, create_backbone
from ..features import compute_layer_features

__all__ = ["Candidate", "CandidateError", "FeatureExtractor", "parse_candidate", "parse_candidates"]

EMBEDDING = "embedding"


class CandidateError(ValueError):
    """A candidate spec names no usable backbone, size or layer."""


@dataclass(frozen=True)
class Candidate:
    """A parsed candidate. `model` is a timm name or a saved-model folder (`saved=True`)."""

    spec: str
    model: str
    image_size: int | None
    layer: str | None
    saved: bool

    @property
    def pass_key(self) -> tuple[str, int | None, bool]:
        """Candidates with the same key are embedded by one forward pass."""
        return (self.model, self.image_size, self.saved)


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith(".") or os.path.exists(name)


def parse_candidate(spec: str) -> Candidate:
    """`NAME[@SIZE][:LAYER]` -> `Candidate`, checking that the model exists (timm name or saved folder)."""
    text = str(spec).strip()
    if not text:
        raise CandidateError("Empty candidate: give e.g. 'tf_efficientnet_lite0@224:pooled' or 'models/pair-matcher'.")
    rest, sep, layer_text = text.rpartition(":") if ":" in text else (text, "", "")
    layer = layer_text if sep else None
    if layer is not None and not layer:
        raise CandidateError(f"Candidate '{spec}': empty layer after ':'; e.g. ':pooled' or ':stage5'.")
    name, at, size_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
    size = size_text if at else None
    image_size = None
    if size is not None:
        try:
            image_size = int(size)
        except ValueError:
            raise CandidateError(f"Candidate '{spec}': input size '{size}' is not an integer, e.g. '@224'.") from None
        if not 32 <= image_size <= 1024:
            raise CandidateError(f"Candidate '{spec}': input size {image_size} is outside 32-1024 pixels.")
    if _looks_like_path(name):
        folder = Path(name)
        if not folder.is_dir():
            raise CandidateError(f"Candidate '{spec}': saved-model folder '{name}' does not exist.")
        if not (folder / "config.json").is_file():
            raise CandidateError(
                f"Candidate '{spec}': '{name}' has no config.json; give a folder written by save_pretrained "
                "(a saved model or a Trainer checkpoint) or a timm model name."
            )
        return Candidate(text, str(folder), image_size, layer, saved=True)
    try:
        check_backbone_name(name)
    except ValueError as err:
        raise CandidateError(f"Candidate '{spec}': {err} Saved models are given by their folder path.") from None
    return Candidate(text, name, image_size, layer, saved=False)


def parse_candidates(specs: str | Sequence[str], min_count: int = 2) -> list[Candidate]:
    """A comma-separated string or a list of specs -> candidates (unique, at least `min_count`)."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    candidates = [parse_candidate(s) for s in specs]
    seen = set()
    for c in candidates:
        if c.spec in seen:
            raise CandidateError(f"Candidate '{c.spec}' is listed twice.")
        seen.add(c.spec)
    if len(candidates) < min_count:
        raise CandidateError(
            f"Need at least {min_count} candidates to rank, got {len(candidates)} ({[c.spec for c in candidates]}); "
            "add e.g. 'tf_efficientnet_lite0@224:pooled,tf_efficientnet_lite2@260:pooled'."
        )
    return candidates


class FeatureExtractor:
    """One forward-pass configuration (model, size): embeds photos into every requested layer at once."""

    def __init__(self, model: str, image_size: int | None, saved: bool):
        self.model_name, self.saved = model, saved
        self.saved_model = None
        if saved:
            self.saved_model = _load_saved(model)
            backbone: Backbone = self.saved_model.backbone
            if image_size is not None and image_size != backbone.image_size:
                if not backbone.is_feature_map:
                    raise CandidateError(
                        f"Saved model '{model}' has a fixed-size backbone ({backbone.image_size} px): drop '@{image_size}'."
                    )
                backbone.image_size = image_size
                backbone.data_config = {**backbone.data_config, "input_size": (3, image_size, image_size)}
        else:
            backbone = create_backbone(model, pretrained=True, image_size=image_size)
        self.backbone = backbone.eval()
        self.image_size = backbone.image_size

    @property
    def layer_names(self) -> list[str]:
        names = list(self.backbone.layer_names)
        if self.saved_model is not None and hasattr(self.saved_model, "get_image_features"):
            names.insert(0, EMBEDDING)
        return names

    @property
    def default_layer(self) -> str:
        return self.layer_names[0] if self.layer_names[0] == EMBEDDING else "pooled"

    def check_layer(self, candidate: Candidate) -> str:
        layer = candidate.layer or self.default_layer
        if layer not in self.layer_names:
            raise CandidateError(f"Candidate '{candidate.spec}': no layer '{layer}'; its layers are {self.layer_names}.")
        return layer

    @torch.no_grad()
    def __call__(self, image_paths: Sequence[str], layers: Sequence[str], batch_size: int = 8) -> dict[str, np.ndarray]:
        """-> {layer: float32 (N, C)} for the requested layers."""
        layers = list(dict.fromkeys(layers))
        backbone_layers = [name for name in layers if name != EMBEDDING]
        if EMBEDDING in layers and "pooled" not in backbone_layers:
            backbone_layers.append("pooled")
        out = compute_layer_features(
            self.backbone,
            list(image_paths),
            backbone_layers,
            batch_size=batch_size,
            desc=f"{self.model_name}@{self.image_size}",
        )
        if EMBEDDING in layers and self.saved_model is not None:
            pooled = torch.from_numpy(out["pooled"])
            out[EMBEDDING] = (
                torch.cat(
                    [self.saved_model.get_image_features(pooled_features=pooled[i : i + 256]) for i in range(0, len(pooled), 256)]
                )
                .float()
                .numpy()
            )
        return {name: out[name] for name in layers}


def _load_saved(folder: str):
    from transformers import AutoModel

    import model_pkg  # noqa: F401  (registers our model types with AutoModel)

    try:
        model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise CandidateError(f"Could not load the saved model in '{folder}': {err}") from err
    if not isinstance(getattr(model, "backbone", None), Backbone):
        raise CandidateError(
            f"Saved model '{folder}' ({type(model).__name__}) has no petmatch image backbone to take features from."
        )
    return model.eval()
