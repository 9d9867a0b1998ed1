"""Atomic file writes: a crash or error never leaves a half-written file behind.

Every writer here writes to a temporary file in the target's folder (so the final
``os.replace`` stays on one filesystem and is atomic), flushes and fsyncs it, then moves
it in place. On any exception the temporary file is removed and the exception re-raised,
leaving a previous version of the target untouched. Folders (a gallery, a vector index) are
written whole into a temporary sibling and swapped in by :func:`swap_folder`.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "backup_path",
    "sha256_file",
    "swap_folder",
]

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


def cache_dir() -> Path:
    """Where petmatch keeps what it can recompute (reference features, derived ONNX graphs): ``$PETMATCH_CACHE`` or
    ``~/.cache/petmatch``."""
    return Path(os.environ.get("PETMATCH_CACHE") or Path.home() / ".cache" / "petmatch")


def update_with_weights(digest: Any, state_dict: dict[str, Any]) -> Any:
    """Feed a module's weights to a hashlib digest: each name, then its tensor as float32 bytes, in name order. The one
    weight hash behind model identities (galleries, text indexes), ONNX exports' staleness and feature caches: weights
    stored in float16 and loaded in float32 hash the same."""
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (the checksums galleries, indexes and manifests record)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False when the platform or file system does not support it (the caller then
    falls back to two renames); raises ``OSError`` on any other failure.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, f"could not swap {a} and {b}: {os.strerror(err)}")


def backup_path(target: Path) -> Path:
    """Where :func:`swap_folder` keeps the previous folder between its two renames (platforms without
    ``renameat2``); a loader that finds ``target`` missing and this present restores it."""
    return target.parent / f".{target.name}.old"


def swap_folder(tmp: Path, target: Path) -> None:
    """Replace the folder ``target`` by the finished folder ``tmp`` (a sibling) in one atomic step: Linux
    ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, rolled back on error, the previous folder left at
    :func:`backup_path` only if the process dies between them."""
    if not target.exists():
        os.rename(tmp, target)
        return
    if _rename_exchange(tmp, target):  # target is now the new folder, tmp the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    backup = backup_path(target)
    if backup.exists():  # left by an earlier interrupted swap while target exists: stale
        shutil.rmtree(backup)
    os.rename(target, backup)
    try:
        os.rename(tmp, target)
    except BaseException:
        if not target.exists():
            os.rename(backup, target)  # roll back; if this fails too, the loader recovers the backup
        raise
    shutil.rmtree(backup, ignore_errors=True)
