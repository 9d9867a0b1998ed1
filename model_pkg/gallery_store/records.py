"""The gallery's animals as records: a stable id, a display name (unique after NFKC, case ignored), species, who
registered it and when, its photos and a staff-only note, read from the index's labels and photo metadata."""

from __future__ import annotations

import datetime
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_NOTE_LENGTH",
    "SPECIES",
    "AnimalRecord",
    "NameTakenError",
    "UnknownAnimalError",
    "animal_id_of",
    "check_note",
    "legacy_animal_id",
    "name_key",
    "normalize_name",
    "now",
    "records_of",
    "slug",
]

MAX_NAME_LENGTH = 64
MAX_NOTE_LENGTH = 500
SPECIES = ("dog", "cat", "other")


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


def name_key(name: str) -> str:
    """What two names are compared by: the stored form, case ignored."""
    return normalize_name(name).casefold()


def legacy_animal_id(label: str) -> str:
    """The id of an animal registered before records existed: derived from its name, the same in every process."""
    return "a" + hashlib.sha1(label.encode()).hexdigest()[:12]


def animal_id_of(label: str, meta: dict) -> str:
    """The id of the animal of one index row: its metadata's `animal`, or the legacy id of its label."""
    return meta.get("animal") or legacy_animal_id(label)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_note(note) -> str:
    note = "" if note is None else unicodedata.normalize("NFKC", str(note)).strip()
    if len(note) > MAX_NOTE_LENGTH:
        raise ValueError(f"The note has {len(note)} characters; use at most {MAX_NOTE_LENGTH}.")
    if _has_forbidden_characters(note.replace("\n", " ")):
        raise ValueError("The note contains control or invisible characters: type it again.")
    return note


def slug(name: str) -> str:
    """The folder name of an animal's photos: letters, digits, - and _ of the name, and a hash of it."""
    text = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower()
    return (text or "animal")[:40] + "-" + hashlib.sha1(name.encode()).hexdigest()[:6]


def records_of(labels: Sequence[str], metadata: Sequence[dict]) -> dict[str, AnimalRecord]:
    """{id: record} of an index's rows (labels and photo metadata), in registration order."""
    records: dict[str, AnimalRecord] = {}
    for label, meta in zip(labels, metadata):
        animal = animal_id_of(label, meta)
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
