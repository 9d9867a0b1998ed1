"""A plain JSON REST API beside the Gradio UI: one FastAPI application serves both (`app/main.py` mounts the UI on it).

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

The endpoints share the app's loaded models and gallery (`Services`, `app/api_common.py`); the gallery's endpoints are
`app/api_gallery.py`, the request and response models `app/api_models.py`. Model work runs in worker threads, never on the
event loop that also serves the Gradio UI, through the queue the UI uses too (`app.security.ModelWork`: a bounded
number at once, 503 with Retry-After when too many wait), and concurrent requests batch their photos
(`model_pkg.batching`, set up by `app/main.py`). Errors are JSON `{"detail": "..."}` with the UI's messages:
400 bad input, 401/403 no or a wrong staff key, 404 an unknown id, 409 a name already registered, 413 too many or too
large uploads (the body is refused while it is read), 429 too many requests (with Retry-After), 503 a model that is
not loaded or a full queue. Messages name uploads as the client named them, never a path on the server.
`/docs` shows the OpenAPI schema.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY, RequestBodyLimitMiddleware

from app.api_common import API_PREFIX, MAX_PHOTOS, MAX_UPLOAD_BYTES, Services, bad_input, model_work, require, save_uploads
from app.api_gallery import add_gallery_routes
from app.api_models import HealthResponse, MatchResponse, PhotoPair, SearchHitOut, SearchRequest, SearchResponse, intake_view
from app.security import JsonTooLarge, bearer_key
from model_pkg.data import ImageLoadError
from model_pkg.pair_matcher.pipeline import match_sets

MAX_REQUEST_BYTES = 200 * 1024 * 1024  # a whole request body, refused while it is read (app.main: --max-request-mb)
NO_KEYS = (
    "Registering, editing and deleting are turned off: this server runs as a public demo without staff keys. "
    "Start it with PETMATCH_API_KEYS=<key>[,<key>...] or --api-keys-file FILE to enable them."
)


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

    @api.post(f"{API_PREFIX}/match", response_model=MatchResponse, tags=["set vs set"])
    async def match(
        set_a: list[UploadFile] = File(..., description=f"1-{MAX_PHOTOS} photos of one animal"),
        set_b: list[UploadFile] = File(..., description=f"1-{MAX_PHOTOS} photos of the other"),
    ) -> MatchResponse:
        """Do two sets of photos show the same animal?"""
        model = require(services.pair_model, services.pair_unavailable, "Set vs set")
        with tempfile.TemporaryDirectory(prefix="petmatch-api-") as tmp:
            (Path(tmp) / "a").mkdir()
            (Path(tmp) / "b").mkdir()
            a = await save_uploads(set_a, Path(tmp) / "a", "first set (set_a)")
            b = await save_uploads(set_b, Path(tmp) / "b", "second set (set_b)")
            try:
                result = await model_work(services, match_sets, model, [p for p, _ in a], [p for p, _ in b])
            except (ImageLoadError, ValueError) as err:
                raise bad_input(err, a + b) from err
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
    add_gallery_routes(api, services, staff, is_staff, one_photo)

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
            database, scores, labels = await model_work(services, run_search, text, request)
        except (ValueError, RuntimeError) as err:
            raise bad_input(err) from err
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
