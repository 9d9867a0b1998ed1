"""The app's start: the user gallery seeded with the demo animals, the text-search index, and the models loaded in
the background. Where the models come from (flags, environment variables, safe loading): `app/models.py`, whose
names are importable from here too.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.models import (  # noqa: F401  (re-exported: the app, the benchmarks and the tests import them from here)
    FLAGS,
    ROOT,
    TextSearch,
    load_embedder,
    load_model,
    load_pair_model,
    load_text_search,
    missing_model,
    model_flags,
    resolve_model,
)


def load_gallery(settings: argparse.Namespace, log: Callable[[str], None]):
    """-> (PhotoGallery, None) or (None, why): the user gallery, seeded with the demo dogs on first start."""
    from app.build_demo_assets import ensure_demo_gallery
    from model_pkg.gallery_store.store import PhotoGallery

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
