"""A persistent gallery of named animals for people: register a name with photos, identify a new photo.

    gallery = PhotoGallery("~/.cache/petmatch/gallery", embedder)   # an ArcFaceEmbedderModel
    gallery.register("Bella", ["bella1.jpg", "bella2.jpg"])          # saved to disk before it returns
    result = gallery.identify("found.jpg")
    result.prediction.label, result.prediction.reason, result.matches[0].photo, result.message()

The folder (index, photos, audit log, locks shared by processes and threads) is a :class:`~.folder.GalleryFolder`
that the gallery holds (``folder``); the gallery reads its records, changes them and identifies with it.

Animals are records, not names: every photo's index metadata carries its animal's stable id (`animal`),
species, who registered it and when (`by`, `at`) and an optional staff-only `note` (`records.py`); the index
label is the display name, unique in the gallery (compared after NFKC normalisation, ignoring case), so renaming
relabels the animal's rows. Galleries saved before records existed get ids derived from their names when opened.
Every change is written to the audit log (`audit.py`) under the gallery lock before the index swap it describes.

Embedding, voting and rejection are :class:`GalleryIndex`'s; this module only keeps photos and index together.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..gallery import GalleryIndex, GalleryMismatchError
from ..intake.embedding import embed_photos as intake_embed_photos
from ..intake.embedding import model_fusion
from ..intake.photo_intake import IntakeResult
from ..photo_batches import check_photos
from .audit import read_audit
from .folder import GalleryFolder, ProgressFn
from .identification import GalleryMatch, Identification, kind_thresholds
from .records import (
    SPECIES,
    AnimalRecord,
    NameTakenError,
    UnknownAnimalError,
    animal_id_of,
    check_note,
    legacy_animal_id,
    name_key,
    normalize_name,
    now,
    slug,
)

__all__ = ["PhotoGallery"]


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


class PhotoGallery:
    """Named animals (photos + identity embeddings) in a folder, identified with a :class:`GalleryIndex`.

    Args:
        directory: the gallery folder (created when missing).
        embedder: an ``ArcFaceEmbedderModel`` (anything with ``get_image_features`` and ``config.embedding_size``).
        score_threshold, margin_threshold: the rejection thresholds (default: the embedder config's).
        k: neighbours that vote (default: the embedder config's ``gallery_k``).

    A gallery saved by another embedder is re-embedded from its stored photos when opened (:class:`GalleryFolder`).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        embedder,
        score_threshold: float | None = None,
        margin_threshold: float | None = None,
        k: int | None = None,
    ):
        self.folder = GalleryFolder(directory, embedder, (score_threshold, margin_threshold), k)

    check_name = staticmethod(normalize_name)

    # -- the folder's ----------------------------------------------------------------------------
    directory = property(lambda self: self.folder.directory, doc="The gallery folder.")
    embedder = property(lambda self: self.folder.embedder, doc="The model that embeds the photos.")
    model_id = property(lambda self: self.folder.model_id, doc="The embedder's id (`embedder_id`).")
    k = property(lambda self: self.folder.k, doc="Neighbours that vote.")
    index = property(lambda self: self.folder.index, doc="The :class:`GalleryIndex`, as this process last read it.")
    audit_path = property(lambda self: self.folder.audit_path, doc="The change log (`audit.py`).")

    def set_thresholds(self, score_threshold: float | None, margin_threshold: float) -> None:
        self.folder.set_thresholds(score_threshold, margin_threshold)

    def refresh(self) -> bool:
        """Reload the index if another process saved it since this one last read or wrote it; -> reloaded."""
        return self.folder.refresh()

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self.folder.fresh() as index:
            return len(index)

    @property
    def names(self) -> list[str]:
        with self.folder.fresh() as index:
            return index.identities

    def photo_counts(self) -> dict[str, int]:
        """{name: number of photos}, in registration order."""
        with self.folder.fresh() as index:
            labels = list(index.labels)
        return {name: labels.count(name) for name in dict.fromkeys(labels)}

    def animals(self) -> list[AnimalRecord]:
        """Every registered animal, in registration order (reloads what another process saved meanwhile)."""
        with self.folder.fresh():
            return list(self.folder.records().values())

    def animal(self, animal_id: str) -> AnimalRecord:
        with self.folder.fresh():
            record = self.folder.records().get(animal_id)
        if record is None:
            raise UnknownAnimalError(f"No animal with id {animal_id!r} is registered.")
        return record

    def find_name(self, name: str) -> AnimalRecord | None:
        """The animal registered under `name` (NFKC, case ignored), or None."""
        key = name_key(name)
        with self.folder.fresh():
            return next((r for r in self.folder.records().values() if r.name.casefold() == key), None)

    def photo_file(self, animal_id: str, photo_id: str) -> Path:
        """The stored file of one photo of an animal; `UnknownAnimalError` if either is not registered."""
        with self.folder.fresh() as index:
            for label, meta in zip(index.labels, index.metadata):
                if animal_id_of(label, meta) == animal_id and Path(meta["photo"]).stem == photo_id:
                    return self.directory / meta["photo"]
        raise UnknownAnimalError(f"Animal {animal_id!r} has no photo {photo_id!r}.")

    def audit_log(self, limit: int | None = None) -> list[dict]:
        """The audit entries, oldest first (the last `limit` ones)."""
        return read_audit(self.audit_path, limit)

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
        note = check_note(note)
        if not photos:
            raise ValueError(f"Upload at least one photo of {name} to register it.")
        check_photos(photos)
        # Photos go to new unique files and are embedded outside the locks: other registrations and
        # identifications go on meanwhile. Only adding to the index and saving it are serialised.
        stored = [self.folder.store_photo(photo, name) for photo in photos]
        try:
            vectors = intake_embed_photos(self.embedder, [str(self.directory / p) for p in stored], progress=progress)
            _refuse_reshoots(photos, vectors.intake)
            embeddings = vectors.gallery
            with self.folder.locked():
                self.folder.refresh()  # another process may have registered animals since this one last looked
                records = self.folder.records()
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
                meta = {"animal": animal_id, "species": species, "by": by, "at": now(), "note": note}
                if action == "add_photos":  # the record's fields stay those of its registration
                    first = next(m for lab, m in zip(self.folder.index.labels, self.folder.index.metadata) if lab == name)
                    meta.update({k: first[k] for k in ("by", "at") if k in first})
                self.folder.audit(by, action, animal_id, name=name, photos=[Path(p).stem for p in stored])
                self.folder.index.add(embeddings, [name] * len(stored), metadata=[{"photo": p, **meta} for p in stored])
                self.folder.save()
                return animal_id, self.folder.index.labels.count(name)
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
            note = check_note(note)
        with self.folder.locked():
            self.folder.refresh()
            records = self.folder.records()
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
            labels, metadata = self.folder.index.labels, self.folder.index.metadata
            for i, (label, meta) in enumerate(zip(labels, metadata)):
                if animal_id_of(label, meta) == animal_id:
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
            self.folder.audit(by, "update", animal_id, old_name=record.name, **audited)
            self.folder.rebuild(labels, metadata)
            self.folder.save()
        return self.animal(animal_id)

    def delete(self, animal_id: str, by: str) -> int:
        """Remove an animal, its photos and their stored copies -> how many photos were removed."""
        with self.folder.locked():
            self.folder.refresh()
            record = self.folder.records().get(animal_id)
            if record is None:
                raise UnknownAnimalError(f"No animal with id {animal_id!r} is registered.")
            photos = [
                m["photo"] for label, m in zip(self.folder.index.labels, self.folder.index.metadata) if label == record.name
            ]
            self.folder.audit(by, "delete", animal_id, name=record.name, photos=len(photos))
            removed = self.folder.index.remove(record.name)
            self.folder.save()
        for photo in photos:  # unreachable through the saved index now
            (self.directory / photo).unlink(missing_ok=True)
        return removed

    def remove(self, name: str, by: str = "local") -> int:  # by name, the API before records; `delete` takes an id
        """Forget the animal `name`: its photos leave the index (saved before this returns) and their stored
        copies are deleted. Returns how many photos were removed; a name that is not registered raises a
        `ValueError` listing some registered ones.

        An identification answered just before may still name one of the deleted photos as its thumbnail."""
        name = self.check_name(name)
        with self.folder.locked():
            self.folder.refresh()  # another process may have registered or removed animals since this one last looked
            photos = [m["photo"] for label, m in zip(self.folder.index.labels, self.folder.index.metadata) if label == name]
            if not photos:
                known = self.folder.index.identities
                listed = ", ".join(repr(n) for n in known[:10]) + (", ..." if len(known) > 10 else "")
                raise ValueError(f"No animal named {name!r} is registered (registered: {listed or 'none'}).")
            record = next(r for r in self.folder.records().values() if r.name == name)
            self.folder.audit(by, "delete", record.id, name=name, photos=len(photos))
            removed = self.folder.index.remove(name)
            self.folder.save()
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
        with self.folder.locked():
            self.folder.refresh()
            stored = []
            for label, meta in zip(other.labels, other.metadata):
                relative = f"photos/{slug(label)}/{uuid.uuid4().hex[:12]}.jpg"
                target = self.directory / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(photos_root) / meta["photo"], target)
                stored.append({"animal": legacy_animal_id(label), "by": "demo", "at": now(), **meta, "photo": relative})
            self.folder.audit("app", "add_gallery", "", animals=len(set(other.labels)), photos=len(stored))
            self.folder.index.add(other.vectors, other.labels, metadata=stored)
            self.folder.save()

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
        fusion = model_fusion(self.embedder)
        with self.folder.lock:  # a registration may be changing the index in another thread
            self.folder.refresh()
            if len(self.folder.index) == 0:  # the last animal was removed while the photo was being embedded
                raise ValueError(empty)
            # one search: the vote of the k nearest photos, and the 50 nearest for the matches shown beside it
            thresholds = kind_thresholds(fusion, seen.kind, self.folder.index.score_threshold, self.folder.index.margin_threshold)
            (prediction,), scores, labels, ids = self.folder.index.classify_and_search(query, self.k, 50, thresholds)
            position = {id_: i for i, id_ in enumerate(self.folder.index.ids)}
            metadata = self.folder.index.metadata
            matches: list[GalleryMatch] = []
            for score, label, id_ in zip(scores[0], labels[0], ids[0]):
                if label not in {m.label for m in matches}:
                    meta = metadata[position[id_]]
                    animal = animal_id_of(label, meta)
                    matches.append(GalleryMatch(label, float(score), str(self.directory / meta["photo"]), animal))
                if len(matches) == top:
                    break
        if not seen.usable:  # the intake's reason beats any vote: the photo itself must be retaken
            prediction = replace(prediction, label=None, accepted=False, reason="reshoot")
        return Identification(prediction, matches, *thresholds, seen)
