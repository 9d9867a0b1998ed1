"""What the REST API's endpoints share (`app/api.py`, `app/api_gallery.py`): the loaded services, the limits on
uploads, saving uploads to a temporary folder, model work through the UI's queue, and the errors they answer with."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.security import Busy, ModelWork, StaffKeys, redact_paths
from model_pkg.data import ImageLoadError
from model_pkg.data.images import check_upload
from model_pkg.gallery_store.records import NameTakenError, UnknownAnimalError

__all__ = [
    "API_PREFIX",
    "MAX_PHOTOS",
    "MAX_UPLOAD_BYTES",
    "TEXT_LOAD_WAIT_S",
    "Services",
    "bad_input",
    "gallery_error",
    "require",
    "save_uploads",
    "model_work",
]

API_PREFIX = "/api/v1"
MAX_PHOTOS = 20  # per set or registration, as in the UI
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per photo
TEXT_LOAD_WAIT_S = 120.0  # a search right after start waits this long for the text model (app.loading.BackgroundLoad)


@dataclass
class Services:
    """What the app loaded once at start; a model that is None comes with the reason it is unavailable."""

    pair_model: Any = None
    pair_unavailable: str | None = None
    gallery: Any = None  # model_pkg.gallery_store.store.PhotoGallery
    gallery_unavailable: str | None = None
    text: Any = None  # app.loading.TextSearch (model + ImageSearchEngine)
    text_unavailable: str | None = None
    text_loaded: threading.Event | None = None  # set once a text model loading in the background is done (or failed)
    staff: StaffKeys = field(default_factory=StaffKeys)  # none: a public demo, REST writes answer 403
    work: ModelWork = field(default_factory=lambda: ModelWork(4, 64))  # shared with the UI

    def text_still_loading(self) -> bool:
        return self.text_loaded is not None and not self.text_loaded.is_set()

    def text_search(self) -> Any:
        """The text search, after waiting (up to TEXT_LOAD_WAIT_S) for a background load; 503 with the reason if none."""
        if self.text_loaded is not None:
            self.text_loaded.wait(TEXT_LOAD_WAIT_S)
        return require(self.text, self.text_unavailable, "Text search")


def require(model: Any, why: str | None, what: str) -> Any:
    """`model`, or 503 saying why it is unavailable (paths redacted)."""
    if model is None:
        raise HTTPException(503, f"{what} is unavailable: {redact_paths(why or 'not loaded')}")
    return model


async def save_uploads(files: list[UploadFile], folder: Path, what: str) -> list[tuple[str, str]]:
    """Write uploads to `folder` -> [(path, original filename)]; 400/413 on empty, too large or non-photo uploads
    (JPEG, PNG, WEBP only, told from their first bytes)."""
    files = [f for f in files if f is not None]
    if not files:
        raise HTTPException(400, f"The {what} is empty: upload at least one photo.")
    if len(files) > MAX_PHOTOS:
        raise HTTPException(413, f"The {what} has {len(files)} photos; upload at most {MAX_PHOTOS}.")
    saved = []
    for i, upload in enumerate(files):
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        name = os.path.basename(upload.filename or f"photo-{i + 1}")
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"{name} is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB: upload a smaller photo.")
        if not data:
            raise HTTPException(400, f"{name} is empty (0 bytes): upload the photo file itself.")
        path = folder / f"{i:02d}-{uuid.uuid4().hex[:8]}.img"  # never the client's name: it is only shown
        path.write_bytes(data)
        try:
            check_upload(path, name)
        except ImageLoadError as err:
            raise HTTPException(400, str(err)) from err
        saved.append((str(path), name))
    return saved


def bad_input(err: Exception, uploads: Sequence[tuple[str, str]] = ()) -> HTTPException:
    """400 with the error's message, uploads named as the client named them (by their saved path or its file name)
    and no other server path."""
    known = {path: name for path, name in uploads} | {os.path.basename(path): name for path, name in uploads}
    return HTTPException(400, redact_paths(str(err), known))


async def model_work(services: Services, fn, *args, **kwargs):
    """Model work in a worker thread, through the queue the UI shares; 503 + Retry-After when it is full."""
    try:
        return await run_in_threadpool(services.work.run, fn, *args, **kwargs)
    except Busy as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from err


def gallery_error(err: Exception, uploads: Sequence[tuple[str, str]] = ()) -> HTTPException:
    """404 for an unknown animal, 409 for a name already registered, else 400 with the message (`bad_input`)."""
    if isinstance(err, UnknownAnimalError):
        return HTTPException(404, str(err))
    if isinstance(err, NameTakenError):
        return HTTPException(409, str(err))
    return bad_input(err, uploads)
