"""The people's gallery: named animals with their photos in a folder, identified from a new photo.

    from model_pkg.gallery_store import PhotoGallery
    gallery = PhotoGallery("~/.cache/petmatch/gallery", embedder)   # an ArcFaceEmbedderModel
    gallery.register("Bella", ["bella1.jpg", "bella2.jpg"])
    gallery.identify("found.jpg").message()

Modules: `store` (:class:`PhotoGallery`: register, update, delete, identify), `folder` (the index and photos on
disk, shared by processes and threads), `records` (animals as records, names, notes), `audit` (the change log),
`identification` (the answer, its thresholds per kind, its sentence). The package keeps their public names.
"""

from __future__ import annotations

from .folder import embed_photos, embedder_id
from .identification import GalleryMatch, Identification, kind_thresholds
from .records import MAX_NAME_LENGTH, SPECIES, AnimalRecord, NameTakenError, UnknownAnimalError, normalize_name
from .store import PhotoGallery

__all__ = [
    "AnimalRecord",
    "GalleryMatch",
    "Identification",
    "NameTakenError",
    "PhotoGallery",
    "UnknownAnimalError",
    "embed_photos",
    "embedder_id",
    "kind_thresholds",
    "normalize_name",
    "MAX_NAME_LENGTH",
    "SPECIES",
]
