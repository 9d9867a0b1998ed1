"""Loading a saved petmatch model safely: the one set of rules the evaluation, bulk embedding and scripts share.

A folder is refused for what it is before anything is read (pickles, remote code, damaged safetensors:
`modeling_utils.check_model_folder`), then for what it holds (`config.json`'s `model_type` must be the family's),
and only then loaded, from safetensors, in float32 on the CPU, in eval mode. Every refusal is a
:class:`ModelLoadError` (a ``ValueError``) that says what to pass instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .modeling_utils import UntrustedModelError, check_model_folder

if TYPE_CHECKING:
    from .arcface import ArcFaceEmbedderModel
    from .dual_encoder import DualEncoderModel
    from .pair_matcher import PairMatcherModel

__all__ = ["ModelLoadError", "load_arcface_model", "load_dual_model", "load_pair_model", "load_saved_model"]


class ModelLoadError(ValueError):
    """The folder is no saved model of the family asked for (missing, untrusted, another family, unreadable)."""


def load_saved_model(path: str | os.PathLike, model_cls: Any, name: str, baseline: str, kind: str, hint: str) -> Any:
    """Load a saved `model_cls` in float32 on CPU; `name`, `kind` and `hint` word the errors for wrong folders,
    `baseline` (when not empty) is what the caller accepts instead of a folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(
            f"model folder {str(folder)!r} does not exist: pass a folder saved by {model_cls.__name__}.save_pretrained"
            + (f" or {baseline!r} for the ImageNet baseline" if baseline else "")
        )
    try:
        check_model_folder(folder)  # pickles, remote code, damaged safetensors: refused before anything is read
    except UntrustedModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{str(folder)!r} has no config.json: it is not a saved {name}")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"{str(config_file)!r} is not a valid config file ({exc})") from exc
    expected = model_cls.config_class.model_type
    if model_type != expected:
        raise ModelLoadError(f"{str(folder)!r} holds a {model_type!r} model, not {kind} ({expected!r}); {hint}")
    try:
        model = model_cls.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    except OSError as exc:
        raise ModelLoadError(f"could not load the {name} from {str(folder)!r}: {exc}") from exc
    return model.eval()


# How each family's refusals are worded: what it is, the baseline `evaluate` takes instead of a folder, what it is
# not, and which command needs it.
_WORDING = {
    "arcface": dict(
        name="ArcFace embedder",
        baseline="imagenet",  # evaluation.GALLERY_BASELINE
        kind="an ArcFace embedder",
        hint="`evaluate gallery` needs a model that embeds single photos",
    ),
    "pair": dict(
        name="pair-matcher model",
        baseline="imagenet-cosine",  # evaluation.BASELINE
        kind="a pair matcher",
        hint="`evaluate pair` needs a PairMatcherModel",
    ),
    "dual": dict(
        name="dual encoder",
        baseline="",
        kind="a dual encoder",
        hint="`evaluate text-search` needs a DualEncoderModel (e.g. models/dual-encoder)",
    ),
}


def load_arcface_model(path: str | os.PathLike) -> ArcFaceEmbedderModel:
    """Load a saved :class:`ArcFaceEmbedderModel` in float32 on CPU, with clear errors for wrong folders."""
    from .arcface import ArcFaceEmbedderModel

    return load_saved_model(path, ArcFaceEmbedderModel, **_WORDING["arcface"])


def load_pair_model(path: str | os.PathLike) -> PairMatcherModel:
    """Load a saved :class:`PairMatcherModel` in float32 on CPU, with clear errors for wrong folders."""
    from .pair_matcher import PairMatcherModel

    return load_saved_model(path, PairMatcherModel, **_WORDING["pair"])


def load_dual_model(path: str | os.PathLike) -> DualEncoderModel:
    """Load a saved :class:`DualEncoderModel` in float32 on CPU, with clear errors for wrong folders."""
    from .dual_encoder import DualEncoderModel

    return load_saved_model(path, DualEncoderModel, **_WORDING["dual"])
