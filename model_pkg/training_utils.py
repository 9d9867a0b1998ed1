"""Pieces every training entry shares (pair matcher, ArcFace embedder, dual encoder)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["check_options"]


def check_options(config_cls: type, values: Mapping[str, Any], what: str) -> None:
    """Refuse recipe keys that `config_cls` (a dataclass) has no field for, naming the known ones.

    A misspelt option in a YAML recipe or a `--set key=value` would otherwise be a TypeError from the
    dataclass constructor, or worse, silently ignored.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {what} option(s) {unknown}; known options: {sorted(known)}.")
