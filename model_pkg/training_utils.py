"""Pieces every training entry shares (pair matcher, ArcFace embedder, dual encoder)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["check_options", "save_atomically"]


def check_options(config_cls: type, values: Mapping[str, Any], what: str) -> None:
    """Refuse recipe keys that `config_cls` (a dataclass) has no field for, naming the known ones.

    A misspelt option in a YAML recipe or a `--set key=value` would otherwise be a TypeError from the
    dataclass constructor, or worse, silently ignored.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {what} option(s) {unknown}; known options: {sorted(known)}.")


def save_atomically(directory: str | os.PathLike, write) -> None:
    """`write(tmp_dir)` into a temporary sibling, then swap it in: `directory` is always whole or absent."""
    target = Path(directory).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(str(tmp))
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
