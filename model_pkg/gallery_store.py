"""A persistent gallery of named animals for people: register a name with photos, identify a new photo.

    gallery = PhotoGallery("~/.cache/petmatch/gallery", embedder)   # an ArcFaceEmbedderModel
    gallery.register("Bella", ["bella1.jpg", "bella2.jpg"])          # saved to disk before it returns
    result = gallery.identify("found.jpg")
    result.prediction.label, result.prediction.reason, result.matches[0].photo, result.message()

Folder layout (everything written atomically, so a crash never leaves a half-written gallery):

    <directory>/index/                  the :class:`~model_pkg.gallery.GalleryIndex` (faiss + checksums),
                                        saved after every registration, tagged with the embedder's id
    <directory>/photos/<name>/<id>.jpg  a copy of every registered photo: thumbnails for the matches, and
                                        what is re-embedded when the gallery is opened with another embedder

Animals are records, not names: every photo's index metadata carries its animal's stable id (`animal`),
species, who registered it and when (`by`, `at`) and an optional staff-only `note`; the index label is the
display name, unique in the gallery (compared after NFKC normalisation, ignoring case), so renaming relabels
the animal's rows. Galleries saved before records existed get ids derived from their names when opened.

    <directory>/audit.log               one JSON line per change (register, add photos, update, delete): who,
                                        what, when. Append-only, fsynced, written under the gallery lock before
                                        the index swap it describes: an entry may name a change that a kill -9
                                        stopped before its save, never the reverse.

Embedding, voting and rejection are :class:`GalleryIndex`'s; this module only keeps photos and index together.

Several processes may share one gallery folder (two app workers, a Space restarted while the old one
drains): every change happens under a file lock (`<directory>/.gallery.lock`, `filelock`), on the index as
it is on disk at that moment, and each process reloads the index when another one has saved it, so no
registration is lost or overwritten.

Threads of one process (an app answering requests concurrently) share one `PhotoGallery`: reads and changes
of the in-memory index happen under a threading lock, while the slow parts (decoding and embedding photos,
copying them into the folder) run outside it, so identifications go on while an animal is being registered
or removed. An identification sees the gallery as it was before or after a change, never half of it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import threading
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from .data import load_image
from .fileio import atomic_write
from .gallery import META_FILE, GalleryIndex, GalleryMismatchError, Prediction
from .intake.embedding import embed_photos as intake_embed_photos
from .intake.embedding import model_fusion, vector_size
from .intake.photo_intake import IntakeResult
from .intake.settings import FusionConfig
from .modeling_utils import model_identity

__all__ = [
    "AnimalRecord",
    "GalleryMatch",
    "Identification",
    "NameTakenError",
    "PhotoGallery",
    "UnknownAnimalError",
    "decide_identification",
    "embed_photos",
    "embedder_id",
    "kind_thresholds",
    "normalize_name",
    "MAX_NAME_LENGTH",
]

MAX_NAME_LENGTH = 64
MAX_NOTE_LENGTH = 500
SPECIES = ("dog", "cat", "other")
AUDIT_FILE = "audit.log"
_THUMBNAIL_SIDE = 448
ProgressFn = Callable[[int, int], None]
KIND_NAMES = {"dog_face": "dog faces", "dog_body": "whole dogs", "cat_face": "cat faces", "cat_body": "cats in photos"}


def embedder_id(model: torch.nn.Module) -> str:
    """`<model_type>:<16 hex>`: galleries record it and refuse vectors of another embedder; the same rule
    as the text index (`modeling_utils.model_identity`: weights and forward-pass config, never paths)."""
    return model_identity(model)


def kind_thresholds(
    fusion: FusionConfig | None, kind: str | None, score_threshold: float | None, margin_threshold: float
) -> tuple[float | None, float]:
    """The gallery's (score, margin) thresholds for a query of `kind`: the fusion's for that kind
    (`KindFusion.gallery_score_threshold` / `gallery_margin_threshold`), the gallery's own where it has none."""
    settings = fusion.kinds.get(kind) if fusion is not None and kind is not None else None
    if settings is not None and settings.gallery_score_threshold is not None:
        score_threshold = settings.gallery_score_threshold
    if settings is not None and settings.gallery_margin_threshold is not None:
        margin_threshold = settings.gallery_margin_threshold
    return score_threshold, margin_threshold


def decide_identification(prediction: Prediction, score_threshold: float | None, margin_threshold: float) -> Prediction:
    """The vote of `GalleryIndex.classify` decided again at other thresholds, by its rule: "unknown" below the score
    threshold, else "reshoot" below the margin threshold, else the voted animal."""
    if score_threshold is not None and prediction.top_score < score_threshold:
        reason: str | None = "unknown"
    else:
        reason = "reshoot" if prediction.margin < margin_threshold else None
    best = prediction.candidates[0][0] if prediction.candidates else prediction.label
    return replace(prediction, label=best if reason is None else None, accepted=reason is None, reason=reason)


def _refuse_reshoots(photos: Sequence, seen: Sequence[IntakeResult]) -> None:
    """A photo the intake would have the person retake (no dog or cat, two animals, too small, blurred) is never
    registered: every later identify would be compared with it. Nothing of the upload is kept."""
    bad = [(i, photo, r.reshoot) for i, (photo, r) in enumerate(zip(photos, seen), 1) if r.reshoot]
    if bad:
        named = "; ".join(
            f"photo {i}" + (f" ({Path(photo).name})" if isinstance(photo, (str, os.PathLike)) else "") + f": {why}"
            for i, photo, why in bad
        )
        raise ValueError(f"Nothing was registered. Retake or leave out {named}.")


def embed_photos(model, paths: Sequence, progress: ProgressFn | None = None, batch_size: int = 16) -> np.ndarray:
    """The gallery's vectors (N, `vector_size(model)`) float32 of photos (paths, PIL images or arrays), in batches so
    `progress(done, total)` can be shown: the intake's path (`model_pkg.intake.embed_photos`), so a model whose
    config carries an intake and a fusion gives fused vectors with their species block, and a plain embedder its
    identity embeddings. Every photo is opened with :func:`~model_pkg.data.load_image` first, so a bad upload fails
    with an `ImageLoadError` naming it before any model work is done."""
    return intake_embed_photos(model, paths, batch_size=batch_size, progress=progress).gallery


@dataclass
class GalleryMatch:
    """One registered animal among the best matches: its best photo and that photo's cosine similarity."""

    label: str
    score: float
    photo: str
    animal: str = ""  # the animal's id (`AnimalRecord.id`); the photo's id is the file name without extension


@dataclass
class Identification:
    prediction: Prediction
    matches: list[GalleryMatch] = field(default_factory=list)
    score_threshold: float | None = None
    margin_threshold: float = 0.0
    intake: IntakeResult | None = field(default=None, repr=False)  # what the intake saw in the query (its crop)

    def message(self) -> str:
        """One sentence for a person: who it is, or why the photo was rejected and what to do."""
        p = self.prediction
        if self.intake is not None and self.intake.reshoot:
            return f"Reshoot: {self.intake.reshoot}."
        if p.reason is None:
            return f"Identified: {p.label} (vote share {p.confidence:.0%}, best photo similarity {p.top_score:.2f})."
        closest = self.matches[0].label if self.matches else "none"
        if p.reason == "unknown":
            return (
                f"Unknown animal - reshoot or register it: the best similarity {p.top_score:.2f} is below the "
                f"gallery's threshold{self._for_kind} {self.score_threshold:.2f} (closest: {closest}). {self._retake}, "
                "or register this animal if it is new."
            )
        runner_up = p.candidates[1][0] if len(p.candidates) > 1 else "another animal"
        return (
            f"Not sure - reshoot: {p.candidates[0][0]} and {runner_up} are about equally likely (vote margin "
            f"{p.margin:.2f} < {self.margin_threshold:.2f}). {self._retake}."
        )

    @property
    def _for_kind(self) -> str:
        kind = self.intake.kind if self.intake is not None else None
        return f" for {KIND_NAMES[kind]}" if kind in KIND_NAMES else ""

    @property
    def _retake(self) -> str:
        """What to photograph instead: the face for a face photo, the whole animal for a photo of its body."""
        if self.intake is not None and self.intake.kind is not None and self.intake.kind.endswith("_body"):
            return f"Take a sharp, well-lit photo of the whole {self.intake.species}, filling most of the frame"
        return "Take a sharp, frontal, well-lit photo of the face"


class NameTakenError(ValueError):
    """A registration or rename would give a second animal a registered name (`animal` is the holder)."""

    def __init__(self, message: str, animal: AnimalRecord):
        super().__init__(message)
        self.animal = animal


class UnknownAnimalError(KeyError):
    """No animal with this id is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown animal"


@dataclass
class AnimalRecord:
    """One registered animal: a stable id, its display name, species, who registered it and when, its photos
    (ids: the stored file names without extension), and a note only staff see (e.g. the finder's contact)."""

    id: str
    name: str
    species: str
    registered_by: str
    registered_at: str
    photos: list[str]
    note: str = ""

    def public(self) -> dict:
        """What anyone may see: no note, no registrant."""
        return {
            "id": self.id,
            "name": self.name,
            "species": self.species,
            "registered_at": self.registered_at,
            "photos": len(self.photos),
        }


def _has_forbidden_characters(text: str) -> bool:
    # Cc: control, Cf: format (zero-width joiners, bidi overrides, BOM), Co/Cs/Cn: private, surrogates, unassigned
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Cn") for ch in text)


def normalize_name(name) -> str:
    """A display name as stored: NFKC-normalised (full-width and compatibility letters folded), runs of
    whitespace made one space; control and invisible characters, and names over 64 characters, refused."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("Give the animal a name (e.g. 'Bella') before registering its photos.")
    name = unicodedata.normalize("NFKC", name)
    if _has_forbidden_characters(name.replace("\n", " ").replace("\t", " ").replace("\r", " ")):
        raise ValueError(
            "The name contains control or invisible characters (e.g. zero-width or text-direction marks): "
            "type it again with letters, digits, spaces and punctuation only."
        )
    name = " ".join(name.split())
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"The name has {len(name)} characters; use at most {MAX_NAME_LENGTH}.")
    return name


def _name_key(name: str) -> str:
    return normalize_name(name).casefold()


def _legacy_animal_id(label: str) -> str:
    """The id of an animal registered before records existed: derived from its name, the same in every process."""
    return "a" + hashlib.sha1(label.encode()).hexdigest()[:12]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_note(note) -> str:
    note = "" if note is None else unicodedata.normalize("NFKC", str(note)).strip()
    if len(note) > MAX_NOTE_LENGTH:
        raise ValueError(f"The note has {len(note)} characters; use at most {MAX_NOTE_LENGTH}.")
    if _has_forbidden_characters(note.replace("\n", " ")):
        raise ValueError("The note contains control or invisible characters: type it again.")
    return note


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower()
    return (slug or "animal")[:40] + "-" + hashlib.sha1(name.encode()).hexdigest()[:6]


class PhotoGallery:
    """Named animals (photos + identity embeddings) in a folder, identified with a :class:`GalleryIndex`.

    Args:
        directory: the gallery folder (created when missing).
        embedder: an ``ArcFaceEmbedderModel`` (anything with ``get_image_features`` and ``config.embedding_size``).
        score_threshold, margin_threshold: the rejection thresholds (default: the embedder config's).
        k: neighbours that vote (default: the embedder config's ``gallery_k``).

    A gallery saved by another embedder is re-embedded from its stored photos when opened.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        embedder,
        score_threshold: float | None = None,
        margin_threshold: float | None = None,
        k: int | None = None,
    ):
        self.directory = Path(os.path.expanduser(os.fspath(directory))).resolve()
        self.embedder = embedder.eval()
        self.model_id = embedder_id(embedder)
        cfg = embedder.config
        self.k = int(k or getattr(cfg, "gallery_k", None) or 20)
        self._lock = threading.RLock()  # threads of this process
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file_lock = FileLock(str(self.directory / ".gallery.lock"), thread_local=False)  # other processes
        self._thresholds = (
            getattr(cfg, "score_threshold", None) if score_threshold is None else score_threshold,
            getattr(cfg, "margin_threshold", 0.05) if margin_threshold is None else margin_threshold,
        )
        with self._locked():
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
    def _locked(self):
        """This process's threads, then other processes: held while the index on disk is read or replaced."""
        with self._lock, self._file_lock:
            yield

    def _disk_stamp(self) -> tuple | None:
        """Changes whenever a save swaps a new index folder into place (a new gallery.json file)."""
        try:
            st = os.stat(self.index_dir / META_FILE)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Reload the index if another process saved it since this one last read or wrote it; -> reloaded."""
        with self._lock:
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

    def photo_path(self, i: int) -> str:
        return str(self.directory / self.index.metadata[i]["photo"])

    def __len__(self) -> int:
        with self._lock:
            self.refresh()
            return len(self.index)

    @property
    def names(self) -> list[str]:
        with self._lock:
            self.refresh()
            return self.index.identities

    def photo_counts(self) -> dict[str, int]:
        """{name: number of photos}, in registration order."""
        with self._lock:
            self.refresh()
            labels = list(self.index.labels)
        return {name: labels.count(name) for name in dict.fromkeys(labels)}

    # -- registering -----------------------------------------------------------------------------
    def _store_photo(self, source, name: str) -> str:
        """Copy a photo (re-encoded JPEG, longest side <= 448 px) into photos/<name>/; returns its relative path."""
        image = load_image(source, max_side=_THUMBNAIL_SIDE)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        relative = f"photos/{_slug(name)}/{uuid.uuid4().hex[:12]}.jpg"
        atomic_write(self.directory / relative, lambda fh: fh.write(buffer.getvalue()), binary=True)
        return relative

    check_name = staticmethod(normalize_name)

    # -- records ---------------------------------------------------------------------------------
    def _records(self) -> dict[str, AnimalRecord]:
        """{id: record} of the in-memory index, in registration order (call under `self._lock`)."""
        records: dict[str, AnimalRecord] = {}
        for label, meta in zip(self.index.labels, self.index.metadata):
            animal = meta.get("animal") or _legacy_animal_id(label)
            if animal not in records:
                records[animal] = AnimalRecord(
                    id=animal,
                    name=label,
                    species=meta.get("species", "dog"),
                    registered_by=meta.get("by", "unknown (before records)"),
                    registered_at=meta.get("at", ""),
                    photos=[],
                    note=meta.get("note", ""),
                )
            records[animal].photos.append(Path(meta["photo"]).stem)
        return records

    def animals(self) -> list[AnimalRecord]:
        """Every registered animal, in registration order (reloads what another process saved meanwhile)."""
        with self._lock:
            self.refresh()
            return list(self._records().values())

    def animal(self, animal_id: str) -> AnimalRecord:
        with self._lock:
            self.refresh()
            record = self._records().get(animal_id)
        if record is None:
            raise UnknownAnimalError(f"No animal with id {animal_id!r} is registered.")
        return record

    def find_name(self, name: str) -> AnimalRecord | None:
        """The animal registered under `name` (NFKC, case ignored), or None."""
        key = _name_key(name)
        with self._lock:
            self.refresh()
            return next((r for r in self._records().values() if r.name.casefold() == key), None)

    def photo_file(self, animal_id: str, photo_id: str) -> Path:
        """The stored file of one photo of an animal; `UnknownAnimalError` if either is not registered."""
        with self._lock:
            self.refresh()
            for label, meta in zip(self.index.labels, self.index.metadata):
                if (meta.get("animal") or _legacy_animal_id(label)) == animal_id and Path(meta["photo"]).stem == photo_id:
                    return self.directory / meta["photo"]
        raise UnknownAnimalError(f"Animal {animal_id!r} has no photo {photo_id!r}.")

    # -- audit log -------------------------------------------------------------------------------
    @property
    def audit_path(self) -> Path:
        return self.directory / AUDIT_FILE

    def _audit(self, who: str, action: str, animal: str, **details) -> None:
        """Append one entry and fsync it (call under the file lock). A line torn by a kill -9 is ended first,
        so the entry after it stays readable; readers skip the torn one."""
        entry = {"at": _now(), "who": who, "action": action, "animal": animal, **details}
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"
        with open(self.audit_path, "ab+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())

    def audit_log(self, limit: int | None = None) -> list[dict]:
        """The audit entries, oldest first (the last `limit` ones)."""
        try:
            lines = self.audit_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries[-limit:] if limit else entries

    def _save(self) -> None:
        """Save the in-memory index (under the locks) and remember the disk's stamp."""
        try:
            self.index.save(self.index_dir)
        except BaseException:
            self._stamp = ("unsaved",)  # the in-memory index is ahead of the disk: reload it on next use
            raise
        self._stamp = self._disk_stamp()

    def _rebuild(self, labels: list[str], metadata: list[dict]) -> None:
        """Replace the index by one with the same vectors and ids and new labels / metadata (rename, edit)."""
        index = self._new_index()
        if len(self.index):
            index.add(self.index.vectors, labels, ids=self.index.ids, metadata=metadata)
        index.calibration = self.index.calibration
        self.index = index
        self.set_thresholds(*self._thresholds)

    # -- registering -----------------------------------------------------------------------------
    def register(
        self,
        name: str,
        photos: Sequence,
        progress: ProgressFn | None = None,
        *,
        by: str = "local",
        species: str = "dog",
        note: str = "",
        existing: str = "merge",
    ) -> int:
        """Add photos of `name` (a new animal, or, with `existing="merge"`, more photos of the registered animal
        of that name; `existing="refuse"` raises `NameTakenError` instead) and save the gallery.

        Every photo is checked before anything is stored: a bad one raises `ImageLoadError` naming it
        and leaves the gallery unchanged. Returns how many photos the animal now has."""
        return self._add(name, photos, progress, by=by, species=species, note=note, existing=existing)[1]

    def register_animal(self, name: str, photos: Sequence, by: str, *, species: str = "dog", note: str = "", progress=None):
        """A new animal (`NameTakenError` if the name is registered) -> its record."""
        animal, _ = self._add(name, photos, progress, by=by, species=species, note=note, existing="refuse")
        return self.animal(animal)

    def add_photos(self, animal_id: str, photos: Sequence, by: str, progress: ProgressFn | None = None) -> AnimalRecord:
        """More photos of a registered animal -> its record."""
        record = self.animal(animal_id)
        self._add(record.name, photos, progress, by=by, species=record.species, note=record.note, animal_id=animal_id)
        return self.animal(animal_id)

    def _add(self, name, photos, progress, *, by, species, note, existing="merge", animal_id=None) -> tuple[str, int]:
        name = self.check_name(name)
        if species not in SPECIES:
            raise ValueError(f"species must be one of {', '.join(SPECIES)}, got {species!r}")
        note = _check_note(note)
        if not photos:
            raise ValueError(f"Upload at least one photo of {name} to register it.")
        for photo in photos:
            load_image(photo)
        # Photos go to new unique files and are embedded outside the locks: other registrations and
        # identifications go on meanwhile. Only adding to the index and saving it are serialised.
        stored = [self._store_photo(photo, name) for photo in photos]
        try:
            vectors = intake_embed_photos(self.embedder, [str(self.directory / p) for p in stored], progress=progress)
            _refuse_reshoots(photos, vectors.intake)
            embeddings = vectors.gallery
            with self._locked():
                self.refresh()  # another process may have registered animals since this one last looked
                records = self._records()
                if animal_id is not None:
                    if animal_id not in records:  # deleted while the photos were being embedded
                        raise UnknownAnimalError(f"No animal with id {animal_id!r} is registered.")
                    name, action = records[animal_id].name, "add_photos"
                else:
                    holder = next((r for r in records.values() if r.name.casefold() == name.casefold()), None)
                    if holder is not None and (existing != "merge" or holder.name != name):
                        raise NameTakenError(
                            f"An animal named {holder.name!r} is already registered (id {holder.id}, "
                            f"{len(holder.photos)} photos): add the photos to it, or choose another name.",
                            holder,
                        )
                    animal_id = holder.id if holder is not None else "a" + uuid.uuid4().hex[:12]
                    action = "add_photos" if holder is not None else "register"
                    if holder is not None:
                        species, note = holder.species, holder.note
                meta = {"animal": animal_id, "species": species, "by": by, "at": _now(), "note": note}
                if action == "add_photos":  # the record's fields stay those of its registration
                    first = next(m for lab, m in zip(self.index.labels, self.index.metadata) if lab == name)
                    meta.update({k: first[k] for k in ("by", "at") if k in first})
                self._audit(by, action, animal_id, name=name, photos=[Path(p).stem for p in stored])
                self.index.add(embeddings, [name] * len(stored), metadata=[{"photo": p, **meta} for p in stored])
                self._save()
                return animal_id, self.index.labels.count(name)
        except BaseException:
            for p in stored:
                (self.directory / p).unlink(missing_ok=True)
            raise

    def update(
        self, animal_id: str, by: str, *, name: str | None = None, species: str | None = None, note: str | None = None
    ) -> AnimalRecord:
        """Rename an animal or change its species or note (saved before this returns) -> its record."""
        if name is not None:
            name = self.check_name(name)
        if species is not None and species not in SPECIES:
            raise ValueError(f"species must be one of {', '.join(SPECIES)}, got {species!r}")
        if note is not None:
            note = _check_note(note)
        with self._locked():
            self.refresh()
            records = self._records()
            record = records.get(animal_id)
            if record is None:
                raise UnknownAnimalError(f"No animal with id {animal_id!r} is registered.")
            if name is not None:
                holder = next((r for r in records.values() if r.name.casefold() == name.casefold()), None)
                if holder is not None and holder.id != animal_id:
                    raise NameTakenError(
                        f"An animal named {holder.name!r} is already registered (id {holder.id}): choose another name.",
                        holder,
                    )
            changes = {k: v for k, v in (("name", name), ("species", species), ("note", note)) if v is not None}
            labels, metadata = self.index.labels, self.index.metadata
            for i, (label, meta) in enumerate(zip(labels, metadata)):
                if (meta.get("animal") or _legacy_animal_id(label)) == animal_id:
                    labels[i] = name if name is not None else label
                    metadata[i] = {
                        **meta,
                        "animal": animal_id,
                        **({"species": species} if species is not None else {}),
                        **({"note": note} if note is not None else {}),
                    }
            audited: dict[str, object] = {k: v for k, v in changes.items() if k != "note"}
            if "note" in changes:
                audited["note_changed"] = True  # the note itself stays out of the log (personal data)
            self._audit(by, "update", animal_id, old_name=record.name, **audited)
            self._rebuild(labels, metadata)
            self._save()
        return self.animal(animal_id)

    def delete(self, animal_id: str, by: str) -> int:
        """Remove an animal, its photos and their stored copies -> how many photos were removed."""
        with self._locked():
            self.refresh()
            record = self._records().get(animal_id)
            if record is None:
                raise UnknownAnimalError(f"No animal with id {animal_id!r} is registered.")
            photos = [m["photo"] for label, m in zip(self.index.labels, self.index.metadata) if label == record.name]
            self._audit(by, "delete", animal_id, name=record.name, photos=len(photos))
            removed = self.index.remove(record.name)
            self._save()
        for photo in photos:  # unreachable through the saved index now
            (self.directory / photo).unlink(missing_ok=True)
        return removed

    def remove(self, name: str, by: str = "local") -> int:  # by name, the API before records; `delete` takes an id
        """Forget the animal `name`: its photos leave the index (saved before this returns) and their stored
        copies are deleted. Returns how many photos were removed; a name that is not registered raises a
        `ValueError` listing some registered ones.

        An identification answered just before may still name one of the deleted photos as its thumbnail."""
        name = self.check_name(name)
        with self._locked():
            self.refresh()  # another process may have registered or removed animals since this one last looked
            photos = [m["photo"] for label, m in zip(self.index.labels, self.index.metadata) if label == name]
            if not photos:
                known = self.index.identities
                listed = ", ".join(repr(n) for n in known[:10]) + (", ..." if len(known) > 10 else "")
                raise ValueError(f"No animal named {name!r} is registered (registered: {listed or 'none'}).")
            record = next(r for r in self._records().values() if r.name == name)
            self._audit(by, "delete", record.id, name=name, photos=len(photos))
            removed = self.index.remove(name)
            self._save()
        for photo in photos:  # unreachable through the saved index now
            (self.directory / photo).unlink(missing_ok=True)
        return removed

    def add_gallery(self, other: GalleryIndex, photos_root: str | os.PathLike) -> None:
        """Copy every animal of `other` (a gallery made by the same embedder, whose metadata `photo` paths
        are relative to `photos_root`) into this gallery, photos included, and save it."""
        if other.model_id != self.model_id:
            raise GalleryMismatchError(
                f"the gallery to copy was made by embedder {other.model_id}, this one uses {self.model_id}: rebuild it"
            )
        with self._locked():
            self.refresh()
            stored = []
            for label, meta in zip(other.labels, other.metadata):
                relative = f"photos/{_slug(label)}/{uuid.uuid4().hex[:12]}.jpg"
                target = self.directory / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(photos_root) / meta["photo"], target)
                stored.append({"animal": _legacy_animal_id(label), "by": "demo", "at": _now(), **meta, "photo": relative})
            self._audit("app", "add_gallery", "", animals=len(set(other.labels)), photos=len(stored))
            self.index.add(other.vectors, other.labels, metadata=stored)
            self._save()

    # -- identifying -----------------------------------------------------------------------------
    @torch.no_grad()
    def identify(self, photo, top: int = 5) -> Identification:
        """The registered animal on `photo` (a file path), or a rejection with its reason, plus the
        `top` best-matching animals with their best photo."""
        empty = "The gallery is empty: register an animal (a name and some photos) first."
        if len(self) == 0:
            raise ValueError(empty)
        vectors = intake_embed_photos(self.embedder, [photo])
        query, seen = vectors.gallery, vectors.intake[0]
        with self._lock:  # a registration may be changing the index in another thread
            self.refresh()
            if len(self.index) == 0:  # the last animal was removed while the photo was being embedded
                raise ValueError(empty)
            # one search: the vote of the k nearest photos, and the 50 nearest for the matches shown beside it
            (prediction,), scores, labels, ids = self.index.classify_and_search(query, k=self.k, nearest=50)
            position = {id_: i for i, id_ in enumerate(self.index.ids)}
            metadata = self.index.metadata
            matches: list[GalleryMatch] = []
            for score, label, id_ in zip(scores[0], labels[0], ids[0]):
                if label not in {m.label for m in matches}:
                    meta = metadata[position[id_]]
                    animal = meta.get("animal") or _legacy_animal_id(label)
                    matches.append(GalleryMatch(label, float(score), str(self.directory / meta["photo"]), animal))
                if len(matches) == top:
                    break
        score_threshold, margin_threshold = kind_thresholds(
            model_fusion(self.embedder), seen.kind, self.index.score_threshold, self.index.margin_threshold
        )
        prediction = decide_identification(prediction, score_threshold, margin_threshold)
        if not seen.usable:  # the intake's reason beats any vote: the photo itself must be retaken
            prediction = replace(prediction, label=None, accepted=False, reason="reshoot")
        return Identification(prediction, matches, score_threshold, margin_threshold, seen)
