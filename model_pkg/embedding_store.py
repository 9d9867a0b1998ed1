"""The embeddings folder that `python -m model_pkg.embed` writes: parquet shards and a manifest.

Its own module because more than the embedding loop uses it: `model_pkg.vector_index` builds indexes from the
shards, benchmarks load them, and none of those needs torch or a model.

A folder holds ``shard-<hash>.parquet`` files (one row per photo: ``id``, ``label``, the L2-normalised
``embedding``; unreadable photos in the schema metadata), each complete once it has its final name, and a
``manifest.json`` that lists them with their checksums (rewritten by :func:`write_manifest`). The layout is
described in full in ``model_pkg.embed``'s docstring, which is also the command's ``--help``.

Read it with :func:`iter_embeddings` (shard by shard, bounded memory) or :func:`load_embeddings`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .fileio import atomic_write, atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "EmbeddingsError",
    "iter_embeddings",
    "load_embeddings",
    "part_shards",
    "read_manifest",
    "read_shard_ids",
    "shard_files",
    "shard_name",
    "write_manifest",
    "write_shard",
]

FORMAT = "petmatch-embeddings"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".parquet"


class EmbeddingsError(ValueError):
    """The photos, the model or the output folder cannot be used as given (the message says what to change)."""


# --------------------------------------------------------------------------- #
# Shards and manifest
# --------------------------------------------------------------------------- #
def shard_name(ids: Sequence[str]) -> str:
    """The file name of the shard holding the photos ``ids``."""
    # named by its content: a resumed run never reuses the name of a finished shard (its ids are done)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return f"{SHARD_PREFIX}{digest}{SHARD_SUFFIX}"


def shard_files(out: Path) -> list[Path]:
    """The finished shards of the folder ``out``, sorted by name (temporary files excluded)."""
    return sorted(p for p in out.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}") if not p.name.startswith("."))


def read_shard_ids(path: Path) -> tuple[list[str], list[str]]:
    """(embedded ids, failed ids) of a finished shard."""
    try:
        table = pq.read_table(path, columns=["id"])
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingsError(
            f"shard {str(path)!r} is unreadable ({exc}): delete it and run again to re-embed its photos"
        ) from exc
    meta = table.schema.metadata or {}
    failed = json.loads(meta.get(b"failed", b"[]"))
    return [str(v) for v in table.column("id").to_pylist()], failed


def write_shard(path: Path, ids: list[str], labels: list[str], vectors: np.ndarray, failed: list[str]) -> None:
    """Write one shard atomically: a row per embedded photo (``vectors`` (n, dim)), ``failed`` ids in its metadata."""
    dim = int(vectors.shape[1])
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "id": pa.array(ids, type=pa.string()),
            "label": pa.array(labels, type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    ).replace_schema_metadata({b"failed": json.dumps(failed).encode(), b"dim": str(dim).encode()})
    atomic_write(path, lambda fh: pq.write_table(table, fh), binary=True)


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an embeddings folder (raises :class:`EmbeddingsError` when missing or not one)."""
    path = Path(out) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EmbeddingsError(f"{str(path)!r} does not exist: run `python -m model_pkg.embed ... --out {out}` first") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmbeddingsError(f"{str(path)!r} is corrupt ({exc}): run the embedding command again to rewrite it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EmbeddingsError(f"{str(path)!r} is not a petmatch embeddings manifest")
    return manifest


def write_manifest(out: Path, base: dict[str, Any], total: int | None) -> dict[str, Any]:
    """Rewrite the manifest from the finished shards; an id already in an earlier shard is dropped from later ones."""
    seen: set[str] = set()
    shards: list[dict[str, Any]] = []
    failed: list[str] = []
    for path in shard_files(out):
        ids, bad = read_shard_ids(path)
        dup = [i for i in ids if i in seen]
        if dup:  # only a second run writing into the same folder at the same time can cause this
            logger.warning("%s repeats %d ids of earlier shards: rewriting it without them", path.name, len(dup))
            table = pq.read_table(path)
            keep = np.array([i not in seen for i in ids])
            if keep.any():
                vecs = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(len(ids), -1)[keep]
                labels = [lab for lab, k in zip(table.column("label").to_pylist(), keep) if k]
                write_shard(path, [i for i, k in zip(ids, keep) if k], labels, vecs, bad)
                ids = [i for i, k in zip(ids, keep) if k]
            else:
                path.unlink()
                continue
        seen.update(ids)
        failed.extend(b for b in bad if b not in seen)
        shards.append({"file": path.name, "rows": len(ids), "failed": len(bad), "sha256": sha256_file(path)})
    manifest = dict(base)
    manifest.update(
        shards=shards,
        num_embeddings=len(seen),
        failed=sorted(set(failed)),
        num_photos=total,
        complete=total is not None and len(seen) + len(set(failed)) >= total,
    )
    atomic_write_json(manifest, out / MANIFEST_FILE)
    return manifest


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #
def part_shards(manifest: dict[str, Any], part: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """The manifest's shard entries of ``part`` = (i, S): every S-th shard starting at the i-th (all when None)."""
    if part is None:
        return list(manifest["shards"])
    i, count = part
    if not 0 <= i < count:
        raise EmbeddingsError(f"part must be I/S with 0 <= I < S, got {i}/{count}")
    return [entry for j, entry in enumerate(manifest["shards"]) if j % count == i]


def iter_embeddings(
    out: str | os.PathLike, verify: bool = True, part: tuple[int, int] | None = None
) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """Yield ``(ids, labels, vectors (n, dim) float32)`` per finished shard of the manifest, in its order.

    ``verify`` checks each shard's sha256 against the manifest first; ``part`` = (i, S) keeps every S-th
    shard starting at the i-th (:func:`part_shards`), to build one of S index parts."""
    out_dir = Path(out)
    manifest = read_manifest(out_dir)
    dim = int(manifest["dim"])
    for entry in part_shards(manifest, part):
        path = out_dir / entry["file"]
        if not path.is_file():
            raise EmbeddingsError(f"shard {str(path)!r} listed in the manifest is missing: run the embedding command again")
        if verify and sha256_file(path) != entry["sha256"]:
            raise EmbeddingsError(f"shard {str(path)!r} does not match its manifest checksum: run the embedding command again")
        table = pq.read_table(path)
        ids = [str(v) for v in table.column("id").to_pylist()]
        vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(len(ids), dim)
        yield ids, [str(v) for v in table.column("label").to_pylist()], vectors


def load_embeddings(out: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """All embeddings of a folder at once: ``(ids, labels, vectors (N, dim))`` (small collections only)."""
    ids: list[str] = []
    labels: list[str] = []
    chunks = []
    for i, lab, vec in iter_embeddings(out):
        ids.extend(i)
        labels.extend(lab)
        chunks.append(vec)
    dim = int(read_manifest(out)["dim"])
    return ids, labels, np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
