"""A plain JSON REST API beside the Gradio UI: one FastAPI application serves both (`app/app.py` mounts the UI on it).

    POST   /api/v1/match      two sets of photos (multipart `set_a`, `set_b`) -> probability, decision, most alike pair
    POST   /api/v1/identify   one photo (multipart `photo`) -> the animal, or unknown / reshoot with the reason, top matches
    POST   /api/v1/search     {"text": ..., "top_k": 8} -> photo ids, scores and URLs to fetch the photos
    GET    /api/v1/photos/{photo_id}   a photo of the text-search index (only those)
    GET    /api/v1/animals    the registered animals (public record: id, name, species, date, photo count)
    GET    /api/v1/animals/{id}             one animal (staff also see who registered it and the note)
    GET    /api/v1/animals/{id}/photos/{photo_id}   a registered photo, by the ids the API gave (never a path)
    GET    /api/v1/health     {"status": "ok" | "loading" | "degraded"}, nothing more
  staff only (`Authorization: Bearer <key>`; 401 without a key, 403 with a wrong one or when no keys are configured):
    POST   /api/v1/register   a name (form `name`, `species`, `note`) + photos (multipart `photos`) -> the new animal; 409
                              when the name is registered (add photos to it, or choose another name)
    POST   /api/v1/animals/{id}/photos      more photos of a registered animal
    PATCH  /api/v1/animals/{id}             {"name", "species", "note"}: rename (409 when taken) or edit
    DELETE /api/v1/animals/{id}             remove the animal and its photos
    GET    /api/v1/audit      the last changes (who, what, when)

The endpoints share the app's loaded models and gallery (`Services`). Model work runs in worker threads, never on the
event loop that also serves the Gradio UI, through the queue the UI uses too (`app.security.ModelWork`: a bounded
number at once, 503 with Retry-After when too many wait), and concurrent requests batch their photos
(`model_pkg.batching`, set up by `app/app.py`). Errors are JSON `{"detail": "..."}` with the UI's messages:
400 bad input, 401/403 no or a wrong staff key, 404 an unknown id, 409 a name already registered, 413 too many or too
large uploads (the body is refused while it is read), 429 too many requests (with Retry-After), 503 a model that is
not loaded or a full queue. Messages name uploads as the client named them, never a path on the server.
`/docs` shows the OpenAPI schema.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY, RequestBodyLimitMiddleware

from app.security import Busy, JsonTooLarge, ModelWork, StaffKeys, bearer_key, redact_paths
from model_pkg.data import ImageLoadError
from model_pkg.data.images import check_upload
from model_pkg.gallery_store.records import SPECIES, NameTakenError, UnknownAnimalError
from model_pkg.pair_matcher.pipeline import match_sets

API_PREFIX = "/api/v1"
MAX_PHOTOS = 20  # per set or registration, as in the UI
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per photo
MAX_REQUEST_BYTES = 200 * 1024 * 1024  # a whole request body, refused while it is read (app.app: --max-request-mb)
NO_KEYS = (
    "Registering, editing and deleting are turned off: this server runs as a public demo without staff keys. "
    "Start it with PETMATCH_API_KEYS=<key>[,<key>...] or --api-keys-file FILE to enable them."
)
MAX_TOP_K = 50
MAX_QUERY_LENGTH = 1000  # characters of a description
TEXT_LOAD_WAIT_S = 120.0  # a search right after start waits this long for the text model (app.loading.BackgroundLoad)


@dataclass
class Services:
    """What the app loaded once at start; a model that is None comes with the reason it is unavailable."""

    pair_model: Any = None
    pair_unavailable: str | None = None
    gallery: Any = None  # model_pkg.gallery_store.store.PhotoGallery
    gallery_unavailable: str | None = None
    text: Any = None  # app.loading.TextSearch (model + ImageSearchEngine)
    text_unavailable: str | None = None
    text_loaded: threading.Event | None = None  # set once a text model loading in the background is done (or failed)
    staff: StaffKeys = field(default_factory=StaffKeys)  # none: a public demo, REST writes answer 403
    work: ModelWork = field(default_factory=lambda: ModelWork(4, 64))  # shared with the UI

    def text_still_loading(self) -> bool:
        return self.text_loaded is not None and not self.text_loaded.is_set()

    def text_search(self) -> Any:
        """The text search, after waiting (up to TEXT_LOAD_WAIT_S) for a background load; 503 with the reason if none."""
        if self.text_loaded is not None:
            self.text_loaded.wait(TEXT_LOAD_WAIT_S)
        return _require(self.text, self.text_unavailable, "Text search")


# -- response models (the OpenAPI schema at /docs) -------------------------------------------------
class PhotoPair(BaseModel):
    index_a: int = Field(description="position of the photo in set_a (0-based)")
    index_b: int = Field(description="position of the photo in set_b (0-based)")
    filename_a: str
    filename_b: str
    similarity: float = Field(description="cosine similarity of the two photos' embeddings")


class IntakeView(BaseModel):
    """What the photo intake saw in one photo."""

    species: str | None = Field(description="'dog', 'cat', or null when no dog or cat was found")
    kind: str | None = Field(description="'dog_face', 'dog_body', 'cat_face' or 'cat_body'")
    box: list[int] = Field(description="the animal's box (left, top, right, bottom) in the photo as loaded (at most 1,024 px)")
    cropped: bool = Field(description="whether the models saw the box as well as the whole photo")
    reshoot: str | None = Field(description="why this photo should be retaken; null when it is usable")
    note: str | None = None


def intake_view(seen) -> IntakeView:
    return IntakeView(
        species=seen.species, kind=seen.kind, box=list(seen.box), cropped=seen.cropped, reshoot=seen.reshoot, note=seen.note
    )


class MatchResponse(BaseModel):
    same_animal: bool = Field(description="probability >= threshold")
    probability: float = Field(description="probability that the two sets show the same animal")
    threshold: float = Field(description="decision threshold stored in the model for these set sizes")
    set_sizes: list[int]
    most_alike: PhotoPair
    top_pairs: list[PhotoPair]
    kind: str | None = Field(default=None, description="the kind of photo whose calibration decided")
    notes: list[str] = Field(default_factory=list, description="photos left out, a species mismatch, an unsure species")
    intake_a: list[IntakeView] = Field(default_factory=list, description="what the intake saw in each photo of set_a")
    intake_b: list[IntakeView] = Field(default_factory=list)


class Candidate(BaseModel):
    name: str
    vote_share: float


class Match(BaseModel):
    animal_id: str
    name: str
    similarity: float = Field(description="cosine similarity of the animal's best photo")
    photo_url: str = Field(description="where to GET that photo")


class IdentifyResponse(BaseModel):
    decision: str = Field(
        description="'identified', 'unknown' (nothing similar enough) or 'reshoot' (two animals about equally likely, "
        "or the intake found the photo unusable: `intake.reshoot` says why)"
    )
    name: str | None = Field(description="the identified animal, null when rejected")
    message: str = Field(description="one sentence for a person")
    confidence: float = Field(description="the winning animal's share of the vote")
    top_score: float = Field(description="similarity of the best gallery photo")
    candidates: list[Candidate]
    matches: list[Match] = Field(description="the best-matching animals, best first, with their best photo")
    score_threshold: float | None
    margin_threshold: float
    intake: IntakeView | None = Field(default=None, description="what the intake saw in the photo")


class RegisterResponse(BaseModel):
    id: str = Field(description="the animal's stable id")
    name: str
    added: int = Field(description="photos added by this call")
    photos: int = Field(description="photos of this animal in the gallery now")


class Animal(BaseModel):
    id: str
    name: str
    species: str
    registered_at: str
    photos: int


class AnimalDetail(Animal):
    photo_urls: list[str]
    registered_by: str | None = Field(None, description="staff only: who registered it")
    note: str | None = Field(None, description="staff only: e.g. how to reach the finder or owner")


class AnimalUpdate(BaseModel):
    name: str | None = Field(None, description="a new display name (409 when another animal has it)")
    species: str | None = Field(None, description=f"one of {', '.join(SPECIES)}")
    note: str | None = Field(None, max_length=500, description="staff-only note")


class DeleteResponse(BaseModel):
    id: str
    removed_photos: int


class AnimalsResponse(BaseModel):
    count: int
    animals: list[Animal]


class SearchRequest(BaseModel):
    text: str = Field(
        max_length=MAX_QUERY_LENGTH, description="a description of the photo, e.g. 'a black dog running on the beach'"
    )
    top_k: int = Field(8, ge=1, le=MAX_TOP_K, description=f"how many photos (1-{MAX_TOP_K})")


class SearchHitOut(BaseModel):
    photo_id: int = Field(description="the photo's id in the index")
    filename: str
    score: float = Field(
        description="how well the photo matches the text, higher is better: the cosine of their embeddings, plus "
        "the photo's query-bank offset when the model has a bank (a penalty for photos that match every text a little)"
    )
    url: str = Field(description="where to GET the photo")


class SearchResponse(BaseModel):
    text: str
    results: list[SearchHitOut]


class HealthResponse(BaseModel):
    status: str = Field(
        description="'ok' when every model is loaded, 'loading' while one still loads after start, else 'degraded' "
        "(a missing model disables its endpoints, which say why)"
    )


# -- helpers ---------------------------------------------------------------------------------------
def _require(model: Any, why: str | None, what: str) -> Any:
    if model is None:
        raise HTTPException(503, f"{what} is unavailable: {redact_paths(why or 'not loaded')}")
    return model


async def _save_uploads(files: list[UploadFile], folder: Path, what: str) -> list[tuple[str, str]]:
    """Write uploads to `folder` -> [(path, original filename)]; 400/413 on empty, too large or non-photo uploads
    (JPEG, PNG, WEBP only, told from their first bytes)."""
    files = [f for f in files if f is not None]
    if not files:
        raise HTTPException(400, f"The {what} is empty: upload at least one photo.")
    if len(files) > MAX_PHOTOS:
        raise HTTPException(413, f"The {what} has {len(files)} photos; upload at most {MAX_PHOTOS}.")
    saved = []
    for i, upload in enumerate(files):
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        name = os.path.basename(upload.filename or f"photo-{i + 1}")
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"{name} is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB: upload a smaller photo.")
        if not data:
            raise HTTPException(400, f"{name} is empty (0 bytes): upload the photo file itself.")
        path = folder / f"{i:02d}-{uuid.uuid4().hex[:8]}.img"  # never the client's name: it is only shown
        path.write_bytes(data)
        try:
            check_upload(path, name)
        except ImageLoadError as err:
            raise HTTPException(400, str(err)) from err
        saved.append((str(path), name))
    return saved


def _bad_input(err: Exception, uploads: list[tuple[str, str]] = ()) -> HTTPException:
    """400 with the error's message, uploads named as the client named them and no other server path."""
    return HTTPException(400, redact_paths(str(err), {path: name for path, name in uploads}))


async def _work(services: Services, fn, *args, **kwargs):
    """Model work in a worker thread, through the queue the UI shares; 503 + Retry-After when it is full."""
    try:
        return await run_in_threadpool(services.work.run, fn, *args, **kwargs)
    except Busy as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from err


def _gallery_error(err: Exception) -> HTTPException:
    if isinstance(err, UnknownAnimalError):
        return HTTPException(404, str(err))
    if isinstance(err, NameTakenError):
        return HTTPException(409, str(err))
    return _bad_input(err)


# -- the application -------------------------------------------------------------------------------
def create_api(services: Services, max_request_bytes: int = MAX_REQUEST_BYTES) -> FastAPI:
    """The REST endpoints over `services`; mount the Gradio UI on the result with `gr.mount_gradio_app`.

    `max_request_bytes` bounds every request body, the UI's uploads included (413 while it is read); multipart
    forms are parsed with at most 2 x MAX_PHOTOS files (Starlette's default is 1,000)."""
    api = FastAPI(
        title="petmatch API",
        version="1",
        description="Is this the same animal? Set-vs-set matching, gallery identification and text search for "
        "everyone; registering, editing and deleting animals for staff (`Authorization: Bearer <key>`). "
        "The Gradio UI is served at / (staff: /staff/).",
        form_limits={"max_files": 2 * MAX_PHOTOS, "max_fields": 16, "max_part_size": 64 * 1024},
    )
    # Starlette's body limit as middleware (not FastAPI's `max_body_size`, which answers in plain text before any
    # handler): it covers the mounted UI's uploads too, refuses a too-large Content-Length on the first read, and its
    # error reaches `http_error` below, so REST clients get JSON naming the limit. Routes set tighter limits.
    api.add_middleware(RequestBodyLimitMiddleware, max_body_size=max_request_bytes)
    route_limits = {f"{API_PREFIX}/identify": MAX_UPLOAD_BYTES + 2**20, f"{API_PREFIX}/search": 256 * 1024}
    api.add_middleware(JsonTooLarge, limit_for=lambda path: route_limits.get(path, max_request_bytes))

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A missing field or a value out of range is the caller's input: 400 with what was wrong, not 422."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"detail": f"Bad request: {problems}."})

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """JSON errors throughout; the limits Starlette enforces while reading a body say which limit it was."""
        detail, status = exc.detail, exc.status_code
        if status == 413 and detail == "Content Too Large":
            limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY, max_request_bytes)  # this route's limit, or the app's
            detail = f"The request is larger than this endpoint accepts ({limit / 2**20:g} MB): send fewer or smaller photos."
        elif status == 400 and isinstance(detail, str) and detail.startswith("Too many files"):
            status, detail = 413, f"Too many files in one request: at most {MAX_PHOTOS} photos per set or registration."
        return JSONResponse(status_code=status, content={"detail": detail}, headers=getattr(exc, "headers", None))

    def staff(request: Request) -> str:
        """The caller's staff identity (`key:<8 hex>` of the key's SHA-256), or 401/403."""
        if not services.staff.enabled:
            raise HTTPException(403, NO_KEYS)
        key = bearer_key(request.headers)
        if key is None:
            raise HTTPException(
                401,
                "This needs a staff key: send the header 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        who = services.staff.who(key)
        if who is None:
            raise HTTPException(403, "This staff key is not valid.")
        return f"api {who}"

    def is_staff(request: Request) -> bool:
        return services.staff.who(bearer_key(request.headers)) is not None

    def gallery_or_503():
        return _require(services.gallery, services.gallery_unavailable, "The gallery")

    def photo_url(animal_id: str, photo_id: str) -> str:
        return f"{API_PREFIX}/animals/{animal_id}/photos/{photo_id}"

    def detail(record, staff_view: bool) -> AnimalDetail:
        return AnimalDetail(
            **record.public(),
            photo_urls=[photo_url(record.id, p) for p in record.photos],
            registered_by=record.registered_by if staff_view else None,
            note=record.note if staff_view else None,
        )

    @api.post(f"{API_PREFIX}/match", response_model=MatchResponse, tags=["set vs set"])
    async def match(
        set_a: list[UploadFile] = File(..., description=f"1-{MAX_PHOTOS} photos of one animal"),
        set_b: list[UploadFile] = File(..., description=f"1-{MAX_PHOTOS} photos of the other"),
    ) -> MatchResponse:
        """Do two sets of photos show the same animal?"""
        model = _require(services.pair_model, services.pair_unavailable, "Set vs set")
        with tempfile.TemporaryDirectory(prefix="petmatch-api-") as tmp:
            (Path(tmp) / "a").mkdir()
            (Path(tmp) / "b").mkdir()
            a = await _save_uploads(set_a, Path(tmp) / "a", "first set (set_a)")
            b = await _save_uploads(set_b, Path(tmp) / "b", "second set (set_b)")
            try:
                result = await _work(services, match_sets, model, [p for p, _ in a], [p for p, _ in b])
            except (ImageLoadError, ValueError) as err:
                raise _bad_input(err, a + b) from err
        sim = result.photo_similarity
        order = np.argsort(-sim, axis=None)[:5]
        pairs = [
            PhotoPair(index_a=i, index_b=j, filename_a=a[i][1], filename_b=b[j][1], similarity=float(sim[i, j]))
            for i, j in (divmod(int(o), len(b)) for o in order)
        ]
        return MatchResponse(
            same_animal=bool(result.same),
            probability=result.probability,
            threshold=result.threshold,
            set_sizes=[len(a), len(b)],
            most_alike=pairs[0],
            top_pairs=pairs,
            kind=result.kind,
            notes=result.notes,
            intake_a=[intake_view(seen) for seen in result.intake_a],
            intake_b=[intake_view(seen) for seen in result.intake_b],
        )

    one_photo = route_limits[f"{API_PREFIX}/identify"]  # one photo and the form around it: refused while read

    @api.post(f"{API_PREFIX}/identify", response_model=IdentifyResponse, tags=["gallery"], max_body_size=one_photo)
    async def identify(
        photo: UploadFile = File(..., description="a photo of the animal: its face or its whole body, any resolution"),
    ) -> IdentifyResponse:
        """Which registered animal is this, or is it unknown (reshoot or register it)?"""
        gallery = gallery_or_503()
        with tempfile.TemporaryDirectory(prefix="petmatch-api-") as tmp:
            saved = await _save_uploads([photo], Path(tmp), "photo")
            try:
                result = await _work(services, gallery.identify, saved[0][0])
            except (ImageLoadError, ValueError) as err:
                raise _bad_input(err, saved) from err
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
            saved = await _save_uploads(photos, Path(tmp), "upload")
            try:
                record = await _work(
                    services, gallery.register_animal, name, [p for p, _ in saved], who, species=species, note=note
                )
            except (ImageLoadError, ValueError, UnknownAnimalError) as err:
                raise _gallery_error(err) if not isinstance(err, ImageLoadError) else _bad_input(err, saved) from err
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
            saved = await _save_uploads(photos, Path(tmp), "upload")
            try:
                record = await _work(services, gallery.add_photos, animal_id, [p for p, _ in saved], who)
            except (ImageLoadError, ValueError, UnknownAnimalError) as err:
                raise _gallery_error(err) if not isinstance(err, ImageLoadError) else _bad_input(err, saved) from err
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
            raise _gallery_error(err) from err
        return detail(record, is_staff(request))

    @api.patch(
        f"{API_PREFIX}/animals/{{animal_id}}", response_model=AnimalDetail, tags=["gallery (staff)"], max_body_size=256 * 1024
    )
    def update_animal(animal_id: str, change: AnimalUpdate, who: str = Depends(staff)) -> AnimalDetail:
        """Rename an animal (409 when another has the name) or change its species or note."""
        try:
            record = gallery_or_503().update(animal_id, who, name=change.name, species=change.species, note=change.note)
        except (ValueError, UnknownAnimalError) as err:
            raise _gallery_error(err) from err
        return detail(record, True)

    @api.delete(f"{API_PREFIX}/animals/{{animal_id}}", response_model=DeleteResponse, tags=["gallery (staff)"])
    def delete_animal(animal_id: str, who: str = Depends(staff)) -> DeleteResponse:
        """Remove an animal and its photos (the audit log keeps who did it)."""
        try:
            removed = gallery_or_503().delete(animal_id, who)
        except UnknownAnimalError as err:
            raise _gallery_error(err) from err
        return DeleteResponse(id=animal_id, removed_photos=removed)

    @api.get(f"{API_PREFIX}/animals/{{animal_id}}/photos/{{photo_id}}", tags=["gallery"], response_class=FileResponse)
    def animal_photo(animal_id: str, photo_id: str) -> FileResponse:
        """A registered animal's photo, by the ids the API gave: only photos in the gallery's index are served
        (the stored 448 px copy, never the upload), and never by path."""
        try:
            path = gallery_or_503().photo_file(animal_id, photo_id)
        except UnknownAnimalError as err:
            raise _gallery_error(err) from err
        if not path.is_file():
            raise HTTPException(404, f"photo {photo_id} of {animal_id} is in the index but its file is missing.")
        return FileResponse(path, media_type="image/jpeg")

    @api.get(f"{API_PREFIX}/audit", tags=["gallery (staff)"])
    def audit(limit: int = 100, who: str = Depends(staff)) -> list[dict]:
        """The last `limit` changes to the gallery, oldest first: who (a key's fingerprint), what, when."""
        return gallery_or_503().audit_log(max(1, min(limit, 10_000)))

    positions: dict[int, dict[str, int]] = {}  # id(database) -> {stored path: position}, built once per index

    def photo_ids(database) -> dict[str, int]:
        if id(database) not in positions:
            positions.clear()
            positions[id(database)] = {label: i for i, label in enumerate(database.labels)}
        return positions[id(database)]

    def run_search(text, request: SearchRequest):
        database = text.engine.database_or_raise()
        with text.lock:  # see app.loading.TextSearch
            query = text.engine.encode_query(request.text)
        scores, labels = text.engine.search_encoded(query, request.top_k)
        return database, scores, labels

    @api.post(
        f"{API_PREFIX}/search",
        response_model=SearchResponse,
        tags=["text search"],
        max_body_size=route_limits[f"{API_PREFIX}/search"],
    )
    async def search(request: SearchRequest) -> SearchResponse:
        """The photos of the index that best match a description."""
        text = await run_in_threadpool(services.text_search)
        try:
            database, scores, labels = await _work(services, run_search, text, request)
        except (ValueError, RuntimeError) as err:
            raise _bad_input(err) from err
        ids = photo_ids(database)
        return SearchResponse(
            text=request.text,
            results=[
                SearchHitOut(
                    photo_id=ids[label],
                    filename=os.path.basename(label),
                    score=float(score),
                    url=f"{API_PREFIX}/photos/{ids[label]}",
                )
                for label, score in zip(labels, scores)
            ],
        )

    @api.get(f"{API_PREFIX}/photos/{{photo_id}}", tags=["text search"], response_class=FileResponse)
    def photo(photo_id: int) -> FileResponse:
        """A photo of the text-search index, by the id `/search` gave (no other file is served)."""
        text = services.text_search()
        labels = text.engine.database_or_raise().labels
        if not 0 <= photo_id < len(labels):
            raise HTTPException(
                404, f"no photo {photo_id} in the text-search index (ids 0-{len(labels) - 1}): use an id /search returned."
            )
        path = text.engine.resolve_path(labels[photo_id])
        if not os.path.isfile(path):
            raise HTTPException(404, f"photo {photo_id} is in the index but its file is missing on this server.")
        return FileResponse(path)

    @api.get(f"{API_PREFIX}/health", response_model=HealthResponse, tags=["service"])
    def health() -> HealthResponse:
        """What a load balancer needs: 'ok', 'loading' (a model still loads after start) or 'degraded'. No
        versions, sizes or paths; a missing model's endpoints say why with their 503."""
        loaded = (services.pair_model, services.gallery, services.text)
        return HealthResponse(
            status="ok" if all(m is not None for m in loaded) else "loading" if services.text_still_loading() else "degraded"
        )

    return api
