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

from app.api_common import Services
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
from app.security import ModelWork, StaffKeys
from model_pkg.batching import batch_concurrent_calls
from model_pkg.intake.embedding import model_intake
from model_pkg.intake.reference import reference_features


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


def load_services(settings: argparse.Namespace, staff: StaffKeys, log: Callable[[str], None]) -> Services:
    """The models and the gallery, loaded once at start (the text-search model is only looked for: it loads in the
    background, `BackgroundLoad`), with concurrent requests batched into shared backbone passes."""
    log("loading models ...")
    pair_model, pair_unavailable = load_pair_model(settings.pair_model)
    gallery, gallery_unavailable = load_gallery(settings, log)
    for tab, why in (("set vs set", pair_unavailable), ("gallery", gallery_unavailable)):
        if why:
            log(f"{tab} unavailable: {why}")
    # The text-search model loads in the background once the UI is built (`app/main.py` starts it): the other tabs
    # answer meanwhile, and a search that comes first waits for it (cold start, bench/README.md).
    log(f"{len(staff)} staff key(s): staff page at /staff/" if staff.enabled else "no staff keys: public demo mode")
    services = Services(
        pair_model,
        pair_unavailable,
        gallery,
        gallery_unavailable,
        text_loaded=threading.Event(),
        staff=staff,
        work=ModelWork(settings.concurrency, settings.max_waiting),
    )
    services.text_unavailable = missing_model(settings.dual_model, "dual encoder", "--dual-model")
    if services.text_unavailable:
        log(f"text search unavailable: {services.text_unavailable}")
        services.text_loaded.set()
    else:
        services.text_unavailable = "the text-search model is still loading; try again in a few seconds"
    if settings.max_batch_size > 0:
        # Concurrent requests share one backbone pass instead of each running its own, several at once, on the same
        # cores; a lone request runs at once (bench/README.md, "Load").
        if pair_model is not None:
            batch_concurrent_calls(pair_model, "embed_photos", settings.max_batch_size)
        if gallery is not None:
            batch_concurrent_calls(gallery.embedder, "get_image_features", settings.max_batch_size)
        models = [m for m in (pair_model, gallery.embedder if gallery is not None else None) if m is not None]
        if any(model_intake(m) is not None for m in models):
            # the intake's untrained network looks at every photo first (whole view, crop): one pass for all requests too
            batch_concurrent_calls(reference_features(), "forward_features", settings.max_batch_size)
    return services
