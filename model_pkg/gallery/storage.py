"""The gallery on disk: `index.faiss`, `vectors.npy` and `gallery.json` with the checksums of both, written
into a temporary sibling folder and swapped in whole (`fileio.swap_folder`); `read_folder` verifies them. Files only:
what `gallery.json` holds and what is made of the files read are the vector store's (`index.VectorStore`)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .. import vector_index as vi
from ..fileio import backup_path, sha256_file, swap_folder
from .common import (
    FORMAT,
    FORMAT_VERSION,
    GALLERY_FILES,
    INDEX_FILE,
    META_FILE,
    VECTORS_FILE,
    GalleryFileError,
    GalleryMismatchError,
)

__all__ = ["read_folder", "write_folder"]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_folder(directory: str | os.PathLike, index: faiss.Index, vectors: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write a gallery to ``directory`` atomically; returns the folder path.

    Files: ``index.faiss`` (the active index: HNSW/IVF when approximate, else the flat one),
    ``vectors.npy`` (the exact vectors), ``gallery.json`` (``meta``: settings, labels, ids, metadata,
    thresholds, model_id, format version; plus the sha256 of the two binary files).  Everything is
    written and fsynced in a temporary sibling folder, then swapped with ``directory`` in
    one atomic step (Linux ``renameat2``; elsewhere two renames, rolled back on error and
    recovered by :func:`read_folder` after a hard crash).  ``directory`` must be empty, missing or
    hold only a gallery: other files in it are refused, since the folder is replaced whole.
    """
    target = Path(os.path.abspath(os.fspath(directory)))
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"cannot save the gallery to {target}: it exists and is not a folder")
        foreign = sorted(set(os.listdir(target)) - set(GALLERY_FILES))
        if foreign:
            raise ValueError(
                f"cannot save the gallery to {target}: the folder also holds {foreign[:5]}; a gallery "
                "is saved into its own folder and replaced as a whole, so use an empty or gallery-only folder"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    os.mkdir(tmp)
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        with open(tmp / VECTORS_FILE, "wb") as fh:
            np.save(fh, vectors, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_file(tmp / INDEX_FILE)
        meta = {**meta, "sha256": {INDEX_FILE: sha256_file(tmp / INDEX_FILE), VECTORS_FILE: sha256_file(tmp / VECTORS_FILE)}}
        with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        swap_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    return target


def read_folder(
    directory: str | os.PathLike, expected_dim: int | None = None, expected_model_id: str | None = None
) -> tuple[dict[str, Any], faiss.Index, np.ndarray, str]:
    """A gallery written by :func:`write_folder`, verified: ``(meta, index, vectors, kind)``, ``vectors``
    memory-mapped and ``kind`` the index's (``vector_index.kind_of``).  The errors, and the one change it may make
    (restoring a gallery whose save was interrupted), are :meth:`VectorStore.load
    <model_pkg.gallery.index.VectorStore.load>`'s."""
    d = Path(os.path.abspath(os.fspath(directory)))
    if not d.exists():
        backup = backup_path(d)
        if backup.is_dir():
            warnings.warn(
                f"gallery folder {d} is missing but {backup} (left by an interrupted save) exists: restoring it",
                RuntimeWarning,
                stacklevel=2,
            )
            try:
                os.rename(backup, d)
            except OSError:
                d = backup
        else:
            raise GalleryFileError(
                f"gallery folder {d} does not exist: check the path, or build a gallery with add(...) and save(...)"
            )
    if not d.is_dir():
        raise GalleryFileError(f"gallery path {d} is not a folder")
    missing = [f for f in GALLERY_FILES if not (d / f).is_file()]
    if missing:
        raise GalleryFileError(
            f"gallery folder {d} is missing {', '.join(missing)}: the gallery is incomplete; "
            "restore the folder from a backup or rebuild the gallery"
        )
    meta_path = d / META_FILE
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GalleryFileError(
            f"gallery metadata file {meta_path} is corrupt (not valid JSON: {exc}): restore it or rebuild the gallery"
        ) from exc
    required = ("format", "version", "dim", "metric", "labels", "ids", "metadata", "sha256")
    if not isinstance(meta, dict) or any(key not in meta for key in required) or meta.get("format") != FORMAT:
        raise GalleryFileError(
            f"{meta_path} is not a petmatch gallery file (missing fields or wrong format): restore it or rebuild the gallery"
        )
    if not isinstance(meta["version"], int) or meta["version"] > FORMAT_VERSION:
        raise GalleryFileError(
            f"gallery in {d} has format version {meta['version']}, newer than this code supports "
            f"({FORMAT_VERSION}): update petmatch"
        )
    dim, model_id = int(meta["dim"]), meta.get("model_id")
    if expected_dim is not None and int(expected_dim) != dim:
        raise GalleryMismatchError(
            f"gallery in {d} holds {dim}-dimensional vectors but the model produces {int(expected_dim)}-dimensional "
            f"embeddings: the gallery was built with another embedder (model_id={model_id!r}); rebuild the "
            "gallery with this model or use the model that built it"
        )
    if expected_model_id is not None and model_id != expected_model_id:
        raise GalleryMismatchError(
            f"gallery in {d} was built by model {model_id!r}, not by {expected_model_id!r}: embeddings of "
            "different models are not comparable; rebuild the gallery with the current model "
            "(add(...) + save(...)) or use the model that built it"
        )
    for name, what in ((INDEX_FILE, "index"), (VECTORS_FILE, "vectors")):
        if sha256_file(d / name) != meta["sha256"].get(name):
            raise GalleryFileError(
                f"gallery {what} file {d / name} is corrupt (checksum mismatch): restore it or rebuild the gallery"
            )
    try:
        index = faiss.read_index(str(d / INDEX_FILE))
    except RuntimeError as exc:
        raise GalleryFileError(
            f"gallery index file {d / INDEX_FILE} is corrupt (faiss cannot read it: {exc}): restore it or rebuild the gallery"
        ) from exc
    try:
        vectors = np.load(d / VECTORS_FILE, mmap_mode="r", allow_pickle=False)  # checked, not copied
    except (ValueError, OSError, EOFError) as exc:
        raise GalleryFileError(
            f"gallery vectors file {d / VECTORS_FILE} is corrupt ({exc}): restore it or rebuild the gallery"
        ) from exc
    n = len(meta["labels"])
    problems = []
    if vectors.dtype != np.float32 or vectors.shape != (n, dim):
        problems.append(f"vectors.npy has shape {vectors.shape} {vectors.dtype}, expected ({n}, {dim}) float32")
    if index.ntotal != n or index.d != dim:
        problems.append(f"index.faiss holds {index.ntotal} vectors of dim {index.d}, expected {n} of dim {dim}")
    if len(meta["ids"]) != n or len(meta["metadata"]) != n:
        problems.append("labels, ids and metadata have different lengths")
    try:
        kind = vi.kind_of(index)
    except vi.VectorIndexError:
        kind = type(faiss.downcast_index(index)).__name__
    if meta.get("index_type", "flat") != kind:
        problems.append(
            f"index.faiss is a {type(faiss.downcast_index(index)).__name__}, gallery.json says {meta.get('index_type')!r}"
        )
    expected_metric = faiss.METRIC_INNER_PRODUCT if meta["metric"] == "ip" else faiss.METRIC_L2
    if index.metric_type != expected_metric:
        problems.append(f"index.faiss uses faiss metric {index.metric_type}, gallery.json says {meta['metric']!r}")
    if problems:
        raise GalleryFileError(f"gallery in {d} is inconsistent ({'; '.join(problems)}): restore it or rebuild the gallery")
    return meta, index, vectors, kind
