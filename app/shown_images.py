"""The images the app shows: JPEG files it writes itself (at most 448 px), never a photo's own folder, and what the
intake saw in a photo (its crop and a caption)."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from model_pkg.data import load_image

__all__ = ["KIND_WORDS", "SHOWN_DIR", "THUMBNAIL_SIDE", "image_file", "intake_view", "thumbnail"]

THUMBNAIL_SIDE = 448  # photos the app shows are re-encoded at most this big, never served from their folder

# Images the app shows are files it writes here, named by their content and written once (temporary name, then
# rename): Gradio copies a returned file into its cache race-free, whereas a PIL image returned to two requests at once
# is rewritten in place by each (gradio's save_pil_to_cache), and a client downloading it meanwhile got 0 bytes.
# Files older than an hour are removed as new ones are written, like Gradio's own cache; all of them at exit.
SHOWN_DIR = Path(tempfile.gettempdir()) / f"petmatch-shown-{os.getpid()}"
atexit.register(shutil.rmtree, SHOWN_DIR, True)
_shown_sweep = [0.0]


def image_file(image) -> str:
    """An image to show (a PIL image), as a JPEG file named by its content; -> its path."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    target = SHOWN_DIR / f"{hashlib.sha256(data).hexdigest()[:32]}.jpg"
    try:
        os.utime(target)  # shown again: not swept for another hour
    except FileNotFoundError:
        SHOWN_DIR.mkdir(exist_ok=True)
        tmp = SHOWN_DIR / f".{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)
    now = time.time()
    if now - _shown_sweep[0] > 600:
        _shown_sweep[0] = now
        for old in SHOWN_DIR.iterdir():
            with contextlib.suppress(OSError):
                if now - old.stat().st_mtime > 3600:
                    old.unlink()
    return str(target)


def thumbnail(path: str) -> str:
    """A photo as a file the app writes (at most 448 px): the photo's own folder is never exposed."""
    return image_file(load_image(path, max_side=THUMBNAIL_SIDE))


KIND_WORDS = {"dog_face": "dog face", "dog_body": "whole dog", "cat_face": "cat face", "cat_body": "cat"}


def intake_view(seen, label: str):
    """(thumbnail of what the intake cropped, caption: kind and any reshoot reason) for one photo."""
    crop = (seen.crop or seen.image).copy()
    crop.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    what = KIND_WORDS.get(seen.kind or "", "no dog or cat") + (" (cropped)" if seen.cropped else "")
    return image_file(crop), f"{label}: {what}" + (f" - reshoot: {seen.reshoot}" if seen.reshoot else "")
