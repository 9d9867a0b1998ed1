"""Demo mode's private galleries: a visitor's copy of the shared gallery in a temporary folder, removed with the
browser session (and at exit)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import weakref

import gradio as gr

from model_pkg.gallery_store.store import PhotoGallery

__all__ = ["MAX_SESSION_GALLERIES", "SessionGallery", "close_session"]

MAX_SESSION_GALLERIES = 50  # demo mode: visitors' private galleries alive at once


class SessionGallery:
    """A demo visitor's private gallery: a copy of the shared gallery (vectors and 448 px photos) in a temporary
    folder, plus what the visitor registers. Lives in the browser session's `gr.State`; removed with it (and at exit)."""

    live = 0
    _lock = threading.Lock()
    _open: weakref.WeakSet[SessionGallery] = weakref.WeakSet()

    def __init__(self, shared: PhotoGallery):
        with SessionGallery._lock:
            if SessionGallery.live >= MAX_SESSION_GALLERIES:
                raise gr.Error("Too many visitors are trying the demo gallery right now: try again in a few minutes.")
            SessionGallery.live += 1
        self.folder = tempfile.mkdtemp(prefix="petmatch-session-")
        try:
            index = shared.index
            self.gallery = PhotoGallery(
                self.folder, shared.embedder, score_threshold=index.score_threshold, margin_threshold=index.margin_threshold
            )
            with shared.folder.lock:
                self.gallery.add_gallery(shared.index, shared.directory)
        except BaseException:
            self.close()
            raise
        SessionGallery._open.add(self)

    @classmethod
    def close_all(cls) -> None:
        for session in list(cls._open):
            session.close()

    def __deepcopy__(self, memo):  # gr.State copies values; this one holds locks and a folder
        return self

    def close(self) -> None:
        if self.folder and os.path.isdir(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
            with SessionGallery._lock:
                SessionGallery.live -= 1
        self.folder = ""


atexit.register(SessionGallery.close_all)


def close_session(session) -> None:
    """gr.State's delete callback: the session's gallery folder goes."""
    if session is not None:
        session.close()
