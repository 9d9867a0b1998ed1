"""The REST API's gallery endpoints: identify a photo (everyone), the registered animals and their photos (everyone,
staff see more), register, add photos, edit, delete and the audit log (staff). Mounted by `app.api.create_api`."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse

from app.api_common import (
    API_PREFIX,
    MAX_PHOTOS,
    Services,
    bad_input,
    gallery_error,
    model_work,
    require,
    save_uploads,
)
from app.api_models import (
    Animal,
    AnimalDetail,
    AnimalsResponse,
    AnimalUpdate,
    Candidate,
    DeleteResponse,
    IdentifyResponse,
    Match,
    RegisterResponse,
    intake_view,
)
from model_pkg.data import ImageLoadError
from model_pkg.gallery_store.records import SPECIES, UnknownAnimalError

__all__ = ["add_gallery_routes"]


def add_gallery_routes(
    api: FastAPI, services: Services, staff: Callable[[Request], str], is_staff: Callable[[Request], bool], one_photo: int
) -> None:
    """The gallery's endpoints on `api`: `staff` is the dependency that names a staff caller (401/403 otherwise),
    `is_staff` tells whether a request carries a valid staff key, `one_photo` bounds /identify's body."""

    def gallery_or_503():
        return require(services.gallery, services.gallery_unavailable, "The gallery")

    def photo_url(animal_id: str, photo_id: str) -> str:
        return f"{API_PREFIX}/animals/{animal_id}/photos/{photo_id}"

    def detail(record, staff_view: bool) -> AnimalDetail:
        return AnimalDetail(
            **record.public(),
            photo_urls=[photo_url(record.id, p) for p in record.photos],
            registered_by=record.registered_by if staff_view else None,
            note=record.note if staff_view else None,
        )

    @api.post(f"{API_PREFIX}/identify", response_model=IdentifyResponse, tags=["gallery"], max_body_size=one_photo)
    async def identify(
        photo: UploadFile = File(..., description="a photo of the animal: its face or its whole body, any resolution"),
    ) -> IdentifyResponse:
        """Which registered animal is this, or is it unknown (reshoot or register it)?"""
        gallery = gallery_or_503()
        with tempfile.TemporaryDirectory(prefix="petmatch-api-") as tmp:
            saved = await save_uploads([photo], Path(tmp), "photo")
            try:
                result = await model_work(services, gallery.identify, saved[0][0])
            except (ImageLoadError, ValueError) as err:
                raise bad_input(err, saved) from err
        p = result.prediction
        return IdentifyResponse(
            decision="identified" if p.reason is None else p.reason,
            name=p.label,
            message=result.message(),
            confidence=float(p.confidence),
            top_score=float(p.top_score),
            candidates=[Candidate(name=n, vote_share=float(w)) for n, w in p.candidates],
            matches=[
                Match(animal_id=m.animal, name=m.label, similarity=m.score, photo_url=photo_url(m.animal, Path(m.photo).stem))
                for m in result.matches
            ],
            score_threshold=result.score_threshold,
            margin_threshold=float(result.margin_threshold),
            intake=None if result.intake is None else intake_view(result.intake),
        )

    @api.post(f"{API_PREFIX}/register", response_model=RegisterResponse, tags=["gallery (staff)"])
    async def register(
        name: str = Form(..., description="the animal's name, e.g. 'Bella'"),
        photos: list[UploadFile] = File(..., description=f"1-{MAX_PHOTOS} photos"),
        species: str = Form("dog", description=f"one of {', '.join(SPECIES)}"),
        note: str = Form("", description="staff-only note (e.g. how to reach the finder); never shown publicly"),
        who: str = Depends(staff),
    ) -> RegisterResponse:
        """Register a new animal; 409 when an animal of that name is registered (POST its photos to
        /animals/{id}/photos instead, or choose another name). The gallery is saved before this answers."""
        gallery = gallery_or_503()
        with tempfile.TemporaryDirectory(prefix="petmatch-api-") as tmp:
            saved = await save_uploads(photos, Path(tmp), "upload")
            try:
                record = await model_work(
                    services, gallery.register_animal, name, [p for p, _ in saved], who, species=species, note=note
                )
            except (ImageLoadError, ValueError, UnknownAnimalError) as err:
                raise gallery_error(err, saved) from err
        return RegisterResponse(id=record.id, name=record.name, added=len(saved), photos=len(record.photos))

    @api.post(f"{API_PREFIX}/animals/{{animal_id}}/photos", response_model=RegisterResponse, tags=["gallery (staff)"])
    async def add_photos(
        animal_id: str,
        photos: list[UploadFile] = File(..., description=f"1-{MAX_PHOTOS} photos"),
        who: str = Depends(staff),
    ) -> RegisterResponse:
        """More photos of a registered animal."""
        gallery = gallery_or_503()
        with tempfile.TemporaryDirectory(prefix="petmatch-api-") as tmp:
            saved = await save_uploads(photos, Path(tmp), "upload")
            try:
                record = await model_work(services, gallery.add_photos, animal_id, [p for p, _ in saved], who)
            except (ImageLoadError, ValueError, UnknownAnimalError) as err:
                raise gallery_error(err, saved) from err
        return RegisterResponse(id=record.id, name=record.name, added=len(saved), photos=len(record.photos))

    @api.get(f"{API_PREFIX}/animals", response_model=AnimalsResponse, tags=["gallery"])
    def animals() -> AnimalsResponse:
        """The registered animals (public record: no note, no registrant)."""
        listed = [Animal(**r.public()) for r in gallery_or_503().animals()]  # reloads other processes' changes
        return AnimalsResponse(count=len(listed), animals=listed)

    @api.get(f"{API_PREFIX}/animals/{{animal_id}}", response_model=AnimalDetail, tags=["gallery"])
    def animal(animal_id: str, request: Request) -> AnimalDetail:
        """One animal; with a staff key also who registered it and its note."""
        try:
            record = gallery_or_503().animal(animal_id)
        except UnknownAnimalError as err:
            raise gallery_error(err) from err
        return detail(record, is_staff(request))

    @api.patch(
        f"{API_PREFIX}/animals/{{animal_id}}", response_model=AnimalDetail, tags=["gallery (staff)"], max_body_size=256 * 1024
    )
    def update_animal(animal_id: str, change: AnimalUpdate, who: str = Depends(staff)) -> AnimalDetail:
        """Rename an animal (409 when another has the name) or change its species or note."""
        try:
            record = gallery_or_503().update(animal_id, who, name=change.name, species=change.species, note=change.note)
        except (ValueError, UnknownAnimalError) as err:
            raise gallery_error(err) from err
        return detail(record, True)

    @api.delete(f"{API_PREFIX}/animals/{{animal_id}}", response_model=DeleteResponse, tags=["gallery (staff)"])
    def delete_animal(animal_id: str, who: str = Depends(staff)) -> DeleteResponse:
        """Remove an animal and its photos (the audit log keeps who did it)."""
        try:
            removed = gallery_or_503().delete(animal_id, who)
        except UnknownAnimalError as err:
            raise gallery_error(err) from err
        return DeleteResponse(id=animal_id, removed_photos=removed)

    @api.get(f"{API_PREFIX}/animals/{{animal_id}}/photos/{{photo_id}}", tags=["gallery"], response_class=FileResponse)
    def animal_photo(animal_id: str, photo_id: str) -> FileResponse:
        """A registered animal's photo, by the ids the API gave: only photos in the gallery's index are served
        (the stored 448 px copy, never the upload), and never by path."""
        try:
            path = gallery_or_503().photo_file(animal_id, photo_id)
        except UnknownAnimalError as err:
            raise gallery_error(err) from err
        if not path.is_file():
            raise HTTPException(404, f"photo {photo_id} of {animal_id} is in the index but its file is missing.")
        return FileResponse(path, media_type="image/jpeg")

    @api.get(f"{API_PREFIX}/audit", tags=["gallery (staff)"])
    def audit(limit: int = 100, who: str = Depends(staff)) -> list[dict]:
        """The last `limit` changes to the gallery, oldest first: who (a key's fingerprint), what, when."""
        return gallery_or_503().audit_log(max(1, min(limit, 10_000)))
