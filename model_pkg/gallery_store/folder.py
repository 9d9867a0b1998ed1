"""A gallery folder: the index and the photos it was made from, kept together on disk and shared safely.

Folder layout (everything written atomically, so a crash never leaves a half-written gallery):

    <directory>/index/                  the :class:`~model_pkg.gallery.GalleryIndex` (faiss + checksums),
                                        saved after every registration, tagged with the embedder's id
    <directory>/photos/<name>/<id>.jpg  a copy of every registered photo: thumbnails for the matches, and
                                        what is re-embedded when the gallery is opened with another embedder
    <directory>/audit.log               one JSON line per change (`audit.py`)

Several processes may share one gallery folder (two app workers, a Space restarted while the old one
drains): every change happens under a file lock (`<directory>/.gallery.lock`, `filelock`), on the index as
it is on disk at that moment, and each process reloads the index when another one has saved it, so no
registration is lost or overwritten.

Threads of one process (an app answering requests concurrently) share one gallery: reads and changes
of the in-memory index happen under a threading lock, while the slow parts (decoding and embedding photos,
copying them into the folder) run outside it, so identifications go on while an animal is being registered
or removed. An identification sees the gallery as it was before or after a change, never half of it.

:class:`GalleryFolder` opens, reloads and saves the index, stores photos and appends to the change log;
:class:`~.store.PhotoGallery` holds one and reads the records, changes them (register, update, delete) and
identifies with it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from ..data import load_image
from ..fileio import atomic_write
from ..gallery import META_FILE, GalleryIndex, GalleryMismatchError
from ..intake.embedding import embed_photos as intake_embed_photos
from ..intake.embedding import vector_size
from ..modeling_utils import model_identity
from .audit import AUDIT_FILE, append_audit
from .records import AnimalRecord, records_of, slug

__all__ = ["GalleryFolder", "ProgressFn", "embed_photos", "embedder_id"]

_THUMBNAIL_SIDE = 448
ProgressFn = Callable[[int, int], None]


def embedder_id(model: torch.nn.Module) -> str:
    """`<model_type>:<16 hex>`: galleries record it and refuse vectors of another embedder; the same rule
    as the text index (`modeling_utils.model_identity`: weights and forward-pass config, never paths)."""
    return model_identity(model)


def embed_photos(model, paths: Sequence, progress: ProgressFn | None = None, batch_size: int = 16) -> np.ndarray:
    """The gallery's vectors (N, `vector_size(model)`) float32 of photos (paths, PIL images or arrays), in batches so
    `progress(done, total)` can be shown: the intake's path (`model_pkg.intake.embed_photos`), so a model whose
    config carries an intake and a fusion gives fused vectors with their species block, and a plain embedder its
    identity embeddings. Every photo is opened with :func:`~model_pkg.data.load_image` first, so a bad upload fails
    with an `ImageLoadError` naming it before any model work is done."""
    return intake_embed_photos(model, paths, batch_size=batch_size, progress=progress).gallery


class GalleryFolder:
    """Named animals (photos + identity embeddings) in a folder: the index opened, reloaded and saved, the photos
    stored, the change log appended to, under the locks (``lock``: this process's threads; ``locked()``: and other
    processes). :class:`~.store.PhotoGallery` holds one.

    Args:
        directory: the gallery folder (created when missing).
        embedder: an ``ArcFaceEmbedderModel`` (anything with ``get_image_features`` and ``config.embedding_size``).
        thresholds: (score, margin), the rejection thresholds (each None: the embedder config's).
        k: neighbours that vote (default: the embedder config's ``gallery_k``).

    A gallery saved by another embedder is re-embedded from its stored photos when opened.
    """

    def __init__(self, directory: str | os.PathLike, embedder, thresholds: tuple = (None, None), k: int | None = None):
        self.directory = Path(os.path.expanduser(os.fspath(directory))).resolve()
        self.embedder = embedder.eval()
        self.model_id = embedder_id(embedder)
        cfg = embedder.config
        self.k = int(k or getattr(cfg, "gallery_k", None) or 20)
        self.lock = threading.RLock()  # threads of this process
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file_lock = FileLock(str(self.directory / ".gallery.lock"), thread_local=False)  # other processes
        score_threshold, margin_threshold = thresholds
        self._thresholds = (
            getattr(cfg, "score_threshold", None) if score_threshold is None else score_threshold,
            getattr(cfg, "margin_threshold", 0.05) if margin_threshold is None else margin_threshold,
        )
        with self.locked():
            self.index = self._open()
            self._stamp = self._disk_stamp()
        self.set_thresholds(*self._thresholds)

    # -- files -----------------------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self.directory / "index"

    def _new_index(self) -> GalleryIndex:
        return GalleryIndex(vector_size(self.embedder), "ip", model_id=self.model_id)

    def _open(self) -> GalleryIndex:
        # Temporary folders of saves interrupted by a crash (kill -9, power loss): the index they were about to
        # replace is still in place, so they are debris. Safe to remove: callers hold the file lock, so no save runs.
        for stale in self.directory.glob(f".{self.index_dir.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if not (self.index_dir / META_FILE).is_file():
            return self._new_index()
        try:
            return GalleryIndex.load(self.index_dir, expected_model_id=self.model_id)
        except GalleryMismatchError:
            old = GalleryIndex.load(self.index_dir)
            photos = [str(self.directory / m["photo"]) for m in old.metadata]
            index = self._new_index()
            if photos:
                index.add(embed_photos(self.embedder, photos), old.labels, metadata=old.metadata)
            index.save(self.index_dir)
            return index

    def set_thresholds(self, score_threshold: float | None, margin_threshold: float) -> None:
        self._thresholds = (score_threshold, margin_threshold)
        self.index.score_threshold = None if score_threshold is None else float(score_threshold)
        self.index.margin_threshold = float(margin_threshold)

    @contextlib.contextmanager
    def locked(self):
        """This process's threads, then other processes: held while the index on disk is read or replaced."""
        with self.lock, self._file_lock:
            yield

    def _disk_stamp(self) -> tuple | None:
        """Changes whenever a save swaps a new index folder into place (a new gallery.json file)."""
        try:
            st = os.stat(self.index_dir / META_FILE)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    @contextlib.contextmanager
    def fresh(self) -> Iterator[GalleryIndex]:
        """The index as it is now (reloaded if another process saved it), read under this process's thread lock."""
        with self.lock:
            self.refresh()
            yield self.index

    def refresh(self) -> bool:
        """Reload the index if another process saved it since this one last read or wrote it; -> reloaded."""
        with self.lock:
            if self._disk_stamp() == self._stamp:
                return False
            with self._file_lock:
                stamp = self._disk_stamp()
                if stamp == self._stamp:
                    return False
                self.index = self._open()
                self._stamp = self._disk_stamp()
            self.set_thresholds(*self._thresholds)
            return True

    # -- photos ----------------------------------------------------------------------------------
    def store_photo(self, source, name: str) -> str:
        """Copy a photo (re-encoded JPEG, longest side <= 448 px) into photos/<name>/; returns its relative path."""
        image = load_image(source, max_side=_THUMBNAIL_SIDE)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        relative = f"photos/{slug(name)}/{uuid.uuid4().hex[:12]}.jpg"
        atomic_write(self.directory / relative, lambda fh: fh.write(buffer.getvalue()), binary=True)
        return relative

    # -- records ---------------------------------------------------------------------------------
    def records(self) -> dict[str, AnimalRecord]:
        """{id: record} of the in-memory index, in registration order (call under `self.lock`)."""
        return records_of(self.index.labels, self.index.metadata)

    # -- audit log -------------------------------------------------------------------------------
    @property
    def audit_path(self) -> Path:
        return self.directory / AUDIT_FILE

    def audit(self, who: str, action: str, animal: str, **details) -> None:
        """Append one entry to the audit log and fsync it (call under the file lock; `audit.append_audit`)."""
        append_audit(self.audit_path, who, action, animal, **details)

    def save(self) -> None:
        """Save the in-memory index (under the locks) and remember the disk's stamp."""
        try:
            self.index.save(self.index_dir)
        except BaseException:
            self._stamp = ("unsaved",)  # the in-memory index is ahead of the disk: reload it on next use
            raise
        self._stamp = self._disk_stamp()

    def rebuild(self, labels: list[str], metadata: list[dict]) -> None:
        """Replace the index by one with the same vectors and ids and new labels / metadata (rename, edit)."""
        index = self._new_index()
        if len(self.index):
            index.add(self.index.vectors, labels, ids=self.index.ids, metadata=metadata)
        index.calibration = self.index.calibration
        self.index = index
        self.set_thresholds(*self._thresholds)
