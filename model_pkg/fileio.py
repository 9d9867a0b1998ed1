"""Atomic file writes: a crash or error never leaves a half-written file behind.

Every writer here writes to a temporary file in the target's folder (so the final
``os.replace`` stays on one filesystem and is atomic), flushes and fsyncs it, then moves
it in place. On any exception the temporary file is removed and the exception re-raised,
leaving a previous version of the target untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_save_npy"]

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[IO[Any]], object], *, binary: bool = False) -> None:
    """Call ``write(fh)`` on a temporary file next to ``path``, then move it onto ``path``.

    ``fh`` is opened ``"wb"`` when ``binary``, else ``"w"`` with UTF-8 and ``newline=""``
    (no newline translation, as the csv module expects). Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 less the umask),
        # so a shipped model card or gallery is readable by others as any other file
        os.chmod(tmp, 0o666 & ~_umask())
        fh: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
        with fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(obj: Any, path: PathLike, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (``indent``, trailing newline) to ``path`` atomically."""

    def write(fh) -> None:
        json.dump(obj, fh, indent=indent)
        fh.write("\n")

    atomic_write(path, write)


def atomic_save_npy(path: PathLike, array: np.ndarray) -> None:
    """``np.save`` ``array`` to ``path`` atomically (``path`` is used as given: no ``.npy`` is appended)."""
    atomic_write(path, lambda fh: np.save(fh, array), binary=True)
