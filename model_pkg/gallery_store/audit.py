"""The gallery's audit log: one JSON line per change (register, add photos, update, delete): who, what, when.

Append-only and fsynced, written under the gallery lock before the index swap it describes: an entry may name a
change that a kill -9 stopped before its save, never the reverse."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .records import now

__all__ = ["AUDIT_FILE", "append_audit", "read_audit"]

AUDIT_FILE = "audit.log"


def append_audit(path: Path, who: str, action: str, animal: str, **details) -> None:
    """Append one entry and fsync it (call under the file lock). A line torn by a kill -9 is ended first,
    so the entry after it stays readable; readers skip the torn one."""
    entry = {"at": now(), "who": who, "action": action, "animal": animal, **details}
    line = json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"
    with open(path, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(line.encode())
        fh.flush()
        os.fsync(fh.fileno())


def read_audit(path: Path, limit: int | None = None) -> list[dict]:
    """The audit entries, oldest first (the last `limit` ones)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries[-limit:] if limit else entries
