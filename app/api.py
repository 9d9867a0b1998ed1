"""A plain JSON REST API beside the Gradio UI: one FastAPI application serves both (`app/app.py` mounts the UI on it).

    POST /api/v1/match      two sets of photos (multipart `set_a`, `set_b`) -> probability, decision, threshold, most alike pair
    POST /api/v1/identify   one photo (multipart `photo`) -> the animal, or unknown / reshoot with the reason, top candidates
    POST /api/v1/register   a name (form `name`) + photos (multipart `photos`) -> how many photos the animal now has
    GET  /api/v1/animals    the registered animals and their photo counts
    POST /api/v1/search     {"text": ..., "top_k": 8} -> photo ids, scores and URLs to fetch the photos
    GET  /api/v1/photos/{photo_id}   a photo of the text-search index (only those)
    GET  /api/v1/health     which models are loaded (and why not), gallery size, versions

The endpoints share the app's loaded models and gallery (`Services`); the model work of the async endpoints
runs in FastAPI's thread pool, so the event loop that also serves the Gradio UI never waits on a backbone
pass, and concurrent requests batch their photos (`model_pkg.batching`, set up by `app/app.py`). Errors are JSON
`{"detail": "..."}` with the UI's messages: 400 bad input, 413 too many or too large uploads, 404 an
unknown photo id, 503 a model that is not loaded (with the reason). `/docs` shows the OpenAPI schema.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from model_pkg.data import ImageLoadError
from model_pkg.pair_matcher.pipeline import match_sets

API_PREFIX = "/api/v1"
MAX_PHOTOS = 20  # per set or registration, as in the UI
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per photo
MAX_TOP_K = 50
MAX_QUERY_LENGTH = 1000  # characters of a description
TEXT_LOAD_WAIT_S = 120.0  # a search right after start waits this long for the text model (app.loading.BackgroundLoad)


@dataclass
class Services:
    """What the app loaded once at start; a model that is None comes with the reason it is unavailable."""

    pair_model: Any = None
    pair_unavailable: str | None = None
    gallery: Any = None  # model_pkg.gallery_store.PhotoGallery
    gallery_unavailable: str | None = None
    text: Any = None  # app.loading.TextSearch (model + ImageSearchEngine)
    text_unavailable: str | None = None
    text_loaded: threading.Event | None = None  # set once a text model loading in the background is done (or failed)

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


class MatchResponse(BaseModel):
    same_animal: bool = Field(description="probability >= threshold")
    probability: float = Field(description="probability that the two sets show the same animal")
    threshold: float = Field(description="decision threshold stored in the model for these set sizes")
    set_sizes: list[int]
    most_alike: PhotoPair
    top_pairs: list[PhotoPair]


class Candidate(BaseModel):
    name: str
    vote_share: float


class IdentifyResponse(BaseModel):
    decision: str = Field(
        description="'identified', 'unknown' (nothing similar enough) or 'reshoot' (two animals about equally likely)"
    )
    name: str | None = Field(description="the identified animal, null when rejected")
    message: str = Field(description="one sentence for a person")
    confidence: float = Field(description="the winning animal's share of the vote")
    top_score: float = Field(description="similarity of the best gallery photo")
    candidates: list[Candidate]
    score_threshold: float | None
    margin_threshold: float


class RegisterResponse(BaseModel):
    name: str
    added: int = Field(description="photos added by this call")
    photos: int = Field(description="photos of this animal in the gallery now")


class Animal(BaseModel):
    name: str
    photos: int


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
        description="'ok' when every model is loaded, 'loading' while one still loads after start, else 'degraded'"
    )
    models: dict[str, bool]
    unavailable: dict[str, str] = Field(description="why a model is not loaded")
    gallery_size: int = Field(description="registered photos")
    text_index_size: int
    versions: dict[str, str]


# -- helpers ---------------------------------------------------------------------------------------
def _require(model: Any, why: str | None, what: str) -> Any:
    if model is None:
        raise HTTPException(503, f"{what} is unavailable: {why}")
    return model


async def _save_uploads(files: list[UploadFile], folder: Path, what: str) -> list[tuple[str, str]]:
    """Write uploads to `folder` -> [(path, original filename)]; 400/413 on empty or too large uploads."""
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
        path = folder / f"{i:02d}-{name}"
        path.write_bytes(data)
        saved.append((str(path), name))
    return saved


def _bad_input(err: Exception, tmp: str | None = None) -> HTTPException:
    """400 with the error's message; the server's temporary folder `tmp` is cut out of it, so a message names
    the upload as the user sent it (`photo.jpg`), never a path on this machine."""
    message = str(err)
    if tmp:
        message = re.sub(re.escape(str(Path(tmp))) + r"/(?:[ab]/)?\d\d-", "", message)
    return HTTPException(400, message)


def _versions() -> dict[str, str]:
    import gradio
    import torch
    import transformers

    import model_pkg

    return {
        "petmatch": getattr(model_pkg, "__version__", "0.1.0"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gradio": gradio.__version__,
    }


# -- the application -------------------------------------------------------------------------------
def create_api(services: Services) -> FastAPI:
    """The REST endpoints over `services`; mount the Gradio UI on the result with `gr.mount_gradio_app`."""
    api = FastAPI(
        title="petmatch API",
        version="1",
        description="Is this the same animal? Set-vs-set matching, gallery identification and text search. "
        "The Gradio UI is served at /.",
    )

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A missing field or a value out of range is the caller's input: 400 with what was wrong, not 422."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"detail": f"Bad request: {problems}."})

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
                result = await run_in_threadpool(match_sets, model, [p for p, _ in a], [p for p, _ in b])
            except (ImageLoadError, ValueError) as err:
                raise _bad_input(err, tmp) from err
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
        )

    @api.post(f"{API_PREFIX}/identify", response_model=IdentifyResponse, tags=["gallery"])
    async def identify(photo: UploadFile = File(..., description="a photo of the animal's face")) -> IdentifyResponse:
        """Which registered animal is this, or is it unknown (reshoot or register it)?"""
        gallery = _require(services.gallery, services.gallery_unavailable, "The gallery")
        with tempfile.TemporaryDirectory(prefix="petmatch-api-") as tmp:
            ((path, _),) = await _save_uploads([photo], Path(tmp), "photo")
            try:
                result = await run_in_threadpool(gallery.identify, path)
            except (ImageLoadError, ValueError) as err:
                raise _bad_input(err, tmp) from err
        p = result.prediction
        return IdentifyResponse(
            decision="identified" if p.reason is None else p.reason,
            name=p.label,
            message=result.message(),
            confidence=float(p.confidence),
            top_score=float(p.top_score),
            candidates=[Candidate(name=n, vote_share=float(w)) for n, w in p.candidates],
            score_threshold=result.score_threshold,
            margin_threshold=float(result.margin_threshold),
        )

    @api.post(f"{API_PREFIX}/register", response_model=RegisterResponse, tags=["gallery"])
    async def register(
        name: str = Form(..., description="the animal's name, e.g. 'Bella'"),
        photos: list[UploadFile] = File(..., description=f"1-{MAX_PHOTOS} photos"),
    ) -> RegisterResponse:
        """Register an animal (or add photos of a registered one); the gallery is saved before this answers."""
        gallery = _require(services.gallery, services.gallery_unavailable, "The gallery")
        with tempfile.TemporaryDirectory(prefix="petmatch-api-") as tmp:
            saved = await _save_uploads(photos, Path(tmp), "upload")
            try:
                clean = gallery.check_name(name)
                count = await run_in_threadpool(gallery.register, clean, [p for p, _ in saved])
            except (ImageLoadError, ValueError) as err:
                raise _bad_input(err, tmp) from err
        return RegisterResponse(name=clean, added=len(saved), photos=count)

    @api.get(f"{API_PREFIX}/animals", response_model=AnimalsResponse, tags=["gallery"])
    def animals() -> AnimalsResponse:
        """The registered animals with their number of photos."""
        gallery = _require(services.gallery, services.gallery_unavailable, "The gallery")
        counts = gallery.photo_counts()  # reloads what another app process registered meanwhile
        listed = [Animal(name=n, photos=c) for n, c in counts.items()]
        return AnimalsResponse(count=len(listed), animals=listed)

    positions: dict[int, dict[str, int]] = {}  # id(database) -> {stored path: position}, built once per index

    def photo_ids(database) -> dict[str, int]:
        if id(database) not in positions:
            positions.clear()
            positions[id(database)] = {label: i for i, label in enumerate(database.labels)}
        return positions[id(database)]

    @api.post(f"{API_PREFIX}/search", response_model=SearchResponse, tags=["text search"])
    def search(request: SearchRequest) -> SearchResponse:
        """The photos of the index that best match a description."""
        text = services.text_search()
        try:
            database = text.engine.database_or_raise()
            with text.lock:  # see app.loading.TextSearch
                query = text.engine.encode_query(request.text)
            scores, labels = text.engine.search_encoded(query, request.top_k)
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
        """Which models are loaded, how big the gallery and the text index are, and the versions."""
        loaded = {
            "pair_matcher": services.pair_model is not None,
            "embedder": services.gallery is not None,
            "dual_encoder": services.text is not None,
        }
        reasons = {
            name: why
            for name, why in (
                ("pair_matcher", services.pair_unavailable),
                ("embedder", services.gallery_unavailable),
                ("dual_encoder", services.text_unavailable),
            )
            if why
        }
        text_size = len(services.text.engine.database) if services.text is not None and services.text.engine.database else 0
        return HealthResponse(
            status="ok" if all(loaded.values()) else "loading" if services.text_still_loading() else "degraded",
            models=loaded,
            unavailable=reasons,
            gallery_size=len(services.gallery) if services.gallery is not None else 0,
            text_index_size=text_size,
            versions=_versions(),
        )

    return api
