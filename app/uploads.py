"""What the UI's handlers accept: only files uploaded to this app, at most MAX_PHOTOS photos in JPEG, PNG or WEBP, and
errors that name uploads by their file name, never a server path."""

from __future__ import annotations

import functools
import os

import gradio as gr

from app.security import redact_paths
from app.settings import log
from model_pkg.data import ImageLoadError
from model_pkg.data.images import check_upload

__all__ = ["MAX_PHOTOS", "check_count", "check_formats", "checked", "checked_uploads", "ui_error", "upload_paths", "uploads_only"]

MAX_PHOTOS = 20


def upload_paths(files) -> list[str]:
    """The paths of Gradio file values (paths, file objects or dicts)."""
    return [f if isinstance(f, str) else getattr(f, "name", None) or f["path"] for f in (files or [])]


def ui_error(err: Exception, photos: list[str] = ()) -> gr.Error:
    """A gr.Error with the message, uploads named by their file name and no server path."""
    return gr.Error(redact_paths(str(err), {p: os.path.basename(p) for p in photos}))


def check_formats(photos: list[str]) -> None:
    """Every photo is a JPEG, PNG or WEBP (told from its first bytes), or a gr.Error naming it."""
    for path in photos:
        try:
            check_upload(path)
        except (ImageLoadError, OSError) as err:
            raise ui_error(err, photos) from err


def uploads_only(fn):
    """Wrap a UI handler: every file it gets must be a file uploaded to this app (Gradio's upload folder), never
    a path a client names. Gradio checks this too once the Blocks count as launched (see `app.server.mount`); this is the
    handler's own check, whatever Gradio's state. An exception the handler does not expect reaches the client
    without server paths (Gradio would show its text as it is)."""
    upload_root = os.path.realpath(gr.utils.get_upload_folder())

    def check(value) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                check(v)
            return
        path = value if isinstance(value, str) else getattr(value, "path", None)
        if isinstance(value, dict):
            path = value.get("path")
        if path is None:
            return
        real = os.path.realpath(path)
        if os.path.commonpath([real, upload_root]) != upload_root:
            raise gr.Error(f"{os.path.basename(path)!r} was not uploaded to this app: upload the photo itself.")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for i, value in enumerate(args):
            if i in wrapper.file_args:
                check(value)
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:  # unexpected: the full text goes to the server's log, the client's copy has no paths
            log(f"{fn.__name__} failed: {type(err).__name__}: {err}")
            raise gr.Error(f"The server could not answer ({type(err).__name__}: {redact_paths(str(err))}).") from err

    wrapper.file_args = set()  # type: ignore[attr-defined]
    return wrapper


def checked(fn, *file_positions: int):
    """`uploads_only(fn)` whose arguments at `file_positions` must be uploads to this app."""
    wrapped = uploads_only(fn)
    wrapped.file_args.update(file_positions)
    return wrapped


def checked_uploads(files, what: str) -> list[str]:
    """The paths of one set of uploads, 1 to MAX_PHOTOS of them, each a JPEG, PNG or WEBP; or a gr.Error."""
    photos = upload_paths(files)
    check_count(photos, what)
    check_formats(photos)
    return photos


def check_count(photos: list[str], what: str) -> None:
    """1 to MAX_PHOTOS photos, or a gr.Error saying how many the `what` has."""
    if not photos:
        raise gr.Error(f"The {what} is empty: upload at least one photo.")
    if len(photos) > MAX_PHOTOS:
        raise gr.Error(f"The {what} has {len(photos)} photos; upload at most {MAX_PHOTOS}.")
