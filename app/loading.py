"""Where the apps find their models: one flag and one environment variable per model, local folder or Hub id.

    --pair-model     PETMATCH_PAIR_MODEL      models/pair-matcher       set vs set
    --embedder-model PETMATCH_EMBEDDER_MODEL  models/arcface-embedder   gallery
    --dual-model     PETMATCH_DUAL_MODEL      models/dual-encoder       text search
    --gallery-dir    PETMATCH_GALLERY_DIR     ~/.cache/petmatch/gallery the persistent user gallery
    --assets-dir     PETMATCH_ASSETS_DIR      app/assets                demo photos, demo gallery, text index
    --data           PETMATCH_DATA            ../shared/data            where missing demo photos are copied from

Relative model paths are resolved against the repository first, then the working directory; anything
else shaped like `org/name` is taken as a Hub id. Each loader returns `(model, None)` or `(None, why)`,
so a missing model disables one tab with its reason instead of stopping the app.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def load_gallery(settings: argparse.Namespace, log: Callable[[str], None]):
    """-> (PhotoGallery, None) or (None, why): the user gallery, seeded with the demo dogs on first start."""
    from app.build_demo_assets import ensure_demo_gallery
    from model_pkg.gallery_store import PhotoGallery

    embedder, why = load_embedder(settings.embedder_model)
    if embedder is None:
        return None, why
    try:
        demo_gallery = ensure_demo_gallery(embedder, Path(settings.assets_dir), Path(settings.data), log)
        gallery = PhotoGallery(
            settings.gallery_dir,
            embedder,
            score_threshold=demo_gallery.score_threshold,
            margin_threshold=demo_gallery.margin_threshold,
        )
        if len(gallery) == 0:
            gallery.add_gallery(demo_gallery, Path(settings.assets_dir) / "demo_photos")
            log(f"new gallery in {gallery.directory}, seeded with {len(demo_gallery.identities)} demo dogs")
    except (OSError, ValueError, RuntimeError) as err:
        return None, f"the gallery could not be prepared: {err}"
    return gallery, None


def load_text(settings: argparse.Namespace, log: Callable[[str], None]):
    """-> (TextSearch, None) or (None, why): the dual encoder and its photo index (built when missing or outdated)."""
    from app.build_demo_assets import ensure_text_index

    text, why = load_text_search(settings.dual_model)
    if text is None:
        return None, why
    try:
        ensure_text_index(text.engine, text.model, Path(settings.assets_dir), Path(settings.data), log)
    except Exception as err:  # whatever the index build raises disables only this tab, with the reason
        return None, f"the text index could not be built: {type(err).__name__}: {err}"
    return text, None


def missing_model(ref: str, what: str, flag: str) -> str | None:
    """Why `ref` cannot be a model, when that is clear without loading anything (a local folder that is not there)."""
    where = resolve_model(ref)
    if os.path.isabs(where) and not os.path.isdir(where):
        return f"no {what} at {where}: give a saved model folder or a Hub id with {flag} or {_env_variable(flag)}"
    return None


class BackgroundLoad:
    """A loader run in a daemon thread, so one slow tab does not hold up the app's start.

    The app loads the text-search model (Lite2 + MiniLM + the photo index, ~3-4 s on 2 cores) this way: the set-vs-set
    and gallery tabs answer while it loads (cold start, bench/README.md). `load` returns `(value, None)` or
    `(None, why)`; `on_done(value, why)` runs in the loading thread before `done` is set, so whoever waits on `done`
    sees its effects. The thread lowers its own scheduling priority (Linux threads are scheduled one by one), so it
    takes the cores the first requests leave free."""

    def __init__(
        self,
        what: str,
        load: Callable[[], tuple[Any, str | None]],
        on_done: Callable[[Any, str | None], None],
        done: threading.Event | None = None,
    ):
        self.what = what
        self.done = done if done is not None else threading.Event()
        self._load = load
        self._on_done = on_done
        self._thread = threading.Thread(target=self._run, name=f"load {what}", daemon=True)

    def start(self) -> BackgroundLoad:
        self._thread.start()
        # a daemon thread killed inside torch / ONNX Runtime at exit aborts the process ("terminate called ..."):
        # a program that ends while the model still loads waits for the load first
        atexit.register(self._thread.join, 120)
        return self

    def _run(self) -> None:
        if hasattr(os, "setpriority"):
            with contextlib.suppress(OSError):  # not allowed here: load at normal priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            value, why = self._load()
        except Exception as err:  # anything a loader lets through disables only its tab, with the reason
            value, why = None, f"{self.what} could not be loaded: {type(err).__name__}: {err}"
        try:
            self._on_done(value, why)
        finally:
            self.done.set()
