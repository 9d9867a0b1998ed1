"""Where the apps find their models: one flag and one environment variable per model, local folder or Hub id.

    --pair-model     PETMATCH_PAIR_MODEL      models/pair-matcher       set vs set
    --embedder-model PETMATCH_EMBEDDER_MODEL  models/arcface-embedder   gallery
    --dual-model     PETMATCH_DUAL_MODEL      models/dual-encoder       text search
    --gallery-dir    PETMATCH_GALLERY_DIR     ~/.cache/petmatch/gallery the persistent user gallery
    --assets-dir     PETMATCH_ASSETS_DIR      app/assets                demo photos, demo gallery, text index
    --data           PETMATCH_DATA            ../shared/data            where missing demo photos are copied from

Relative model paths are resolved against the repository first, then the working directory; anything
else shaped like `org/name` is taken as a Hub id. Each loader returns `(model, None)` or `(None, why)`,
so a missing model disables one tab with its reason instead of stopping the app. The app's start (the gallery,
the text index, the background load) is `app/loading.py`, which builds on this module, as `app/build_demo_assets.py`
does.
"""

from __future__ import annotations

import argparse
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

FLAGS = {  # dest: (flag, environment variable, default)
    "pair_model": ("--pair-model", "PETMATCH_PAIR_MODEL", "models/pair-matcher"),
    "embedder_model": ("--embedder-model", "PETMATCH_EMBEDDER_MODEL", "models/arcface-embedder"),
    "dual_model": ("--dual-model", "PETMATCH_DUAL_MODEL", "models/dual-encoder"),
    "gallery_dir": ("--gallery-dir", "PETMATCH_GALLERY_DIR", "~/.cache/petmatch/gallery"),
    "assets_dir": ("--assets-dir", "PETMATCH_ASSETS_DIR", str(ROOT / "app" / "assets")),
    "data": ("--data", "PETMATCH_DATA", str(ROOT.parent / "shared" / "data")),
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def model_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the model and folder flags; each defaults to its environment variable, then to the repo default."""
    for dest, (flag, env, default) in FLAGS.items():
        parser.add_argument(flag, dest=dest, default=os.environ.get(env, default), help=f"(env {env}; default {default})")
    return parser


def _env_variable(flag: str) -> str:
    return next(env for f, env, _ in FLAGS.values() if f == flag)


def resolve_model(ref: str) -> str:
    """A local folder (absolute, or relative to the repo or the working directory) or a Hub id, as given."""
    path = Path(os.path.expanduser(ref))
    for candidate in [path] if path.is_absolute() else [ROOT / path, Path.cwd() / path]:
        if candidate.exists():
            return str(candidate.resolve())
    if _HUB_ID.fullmatch(ref) and not ref.startswith(("models/", "runs/", "./", "../")):
        return ref
    return str(path if path.is_absolute() else ROOT / path)


def load_model(ref: str, model_class: type, what: str, flag: str):
    """`AutoModel.from_pretrained(ref)` in float32 eval mode, checked to be a `model_class`; -> (model, None) or (None, why)."""
    from transformers import AutoConfig, AutoModel

    import model_pkg  # noqa: F401  (registers the models with AutoModel)
    from model_pkg.modeling_utils import check_model_folder

    missing = missing_model(ref, what, flag)
    if missing:
        return None, missing
    env, where = _env_variable(flag), resolve_model(ref)
    try:
        if os.path.isdir(where):
            check_model_folder(where)  # pickles, remote code, damaged safetensors: refused before loading
        config = AutoConfig.from_pretrained(where)
        expected = getattr(model_class, "config_class", None)
        if expected is not None and not isinstance(config, expected):  # checked before any weights are read
            return None, (
                f"{ref!r} holds a {config.model_type!r} model, not a {model_class.__name__} ({what}); check {flag} / {env}"
            )
        model = AutoModel.from_pretrained(where, dtype=torch.float32, use_safetensors=True)
    except Exception as err:  # missing files, offline Hub, unknown model_type: the reason goes to the UI
        return None, f"could not load the {what} from {ref!r}: {type(err).__name__}: {str(err).splitlines()[0]}"
    if not isinstance(model, model_class):
        return None, f"{ref!r} holds a {type(model).__name__}, not a {model_class.__name__} ({what}); check {flag} / {env}"
    return model.eval(), None


def load_pair_model(ref: str):
    from model_pkg import PairMatcherModel

    return load_model(ref, PairMatcherModel, "pair matcher", "--pair-model")


def load_embedder(ref: str):
    from model_pkg import ArcFaceEmbedderModel

    return load_model(ref, ArcFaceEmbedderModel, "ArcFace embedder", "--embedder-model")


@dataclass
class TextSearch:
    """The dual encoder and its `ImageSearchEngine` (model_pkg.dual_encoder.search).

    Hold `lock` while encoding a query: a transformers fast tokenizer shared by threads fails with
    "RuntimeError: Already borrowed" when two calls overlap (huggingface/transformers#47085), and the app
    answers requests in several threads. A query takes milliseconds, so waiting for one costs nothing."""

    model: torch.nn.Module
    engine: object
    lock: threading.Lock = field(default_factory=threading.Lock)


def load_text_search(ref: str):
    """-> (TextSearch, None), or (None, why) when the dual-encoder package or model is missing."""
    try:
        from model_pkg.dual_encoder.search import ImageSearchEngine
    except ImportError as err:
        return None, f"the dual-encoder package is not available in this checkout ({err})"
    from torch import nn

    model, why = load_model(ref, nn.Module, "dual encoder", "--dual-model")
    if model is None:
        return None, why
    return TextSearch(model, ImageSearchEngine(model)), None


def missing_model(ref: str, what: str, flag: str) -> str | None:
    """Why `ref` cannot be a model, when that is clear without loading anything (a local folder that is not there)."""
    where = resolve_model(ref)
    if os.path.isabs(where) and not os.path.isdir(where):
        return f"no {what} at {where}: give a saved model folder or a Hub id with {flag} or {_env_variable(flag)}"
    return None
