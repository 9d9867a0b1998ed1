"""petmatch Gradio app: is this the same animal? Three tabs, one per task, models loaded once at start (the
text-search model in the background once the UI is up, so the other tabs answer sooner).

    python app/main.py                 # http://127.0.0.1:7860, offline, the models in models/
    python app/main.py --embedder-model runs/arcface-embedder/model --gallery-dir /tmp/my-gallery --port 7861
    PETMATCH_PAIR_MODEL=<dir or Hub id> gradio app/main.py

Not `app/app.py`: a script's folder comes first on `sys.path`, where a file `app.py` would stand in for the `app`
package. The packages `app` and `model_pkg` are imported as installed (`pip install -e .`, a line of requirements.txt).

1. Set vs set (`/compare_sets`): two uploads of 1-20 photos -> same-animal probability, the decision at the
   model's stored threshold for those set sizes, and which photos agree most.
2. Gallery (`/identify`): identify a photo among the registered animals, or "unknown - reshoot" with the
   reason. The demo dogs of `app/assets/` are in the gallery from the first start.
3. Text search (`/search_text`): a description -> the best photos of the demo index (Flickr8k dev + demo dogs).

Roles (issue 33, `app/security.py`): the page at `/` is for visitors (match, identify, search). Staff keys come
from `PETMATCH_API_KEYS` (comma-separated) or `--api-keys-file`; with keys, the staff page at `/staff/` (log in
with any user name and a key as the password) adds `/register`, `/update_animal`, `/delete_animal` and
`/audit_log` on the shared gallery. Without keys the app is a public demo: `/` also offers `/register`, into a
gallery private to the browser session (a copy of the shared one, removed with the session); nothing a visitor
does reaches the shared gallery.

The same program serves a plain JSON REST API under `/api/v1` (`app/api.py`; OpenAPI schema at `/docs`).
Every file input is checked to be that client's upload (Gradio's own check, which `mount_gradio_app` leaves off,
is turned on, and each handler checks again); photos are read as JPEG, PNG or WEBP only; results show photos as
images the app encodes, never files from the data or gallery folders, and messages never name a server path.

Flags and environment variables: see `app/loading.py`, plus `--concurrency` / `PETMATCH_CONCURRENCY` (requests
of one kind answered at once; default 4) and `--max-batch-size` / `PETMATCH_MAX_BATCH_SIZE` (photos of
concurrent requests embedded in one backbone pass, `model_pkg.batching`; default 32, 0 = no batching: each
request runs its own pass), `--rate-limit` / `PETMATCH_RATE_LIMIT` (requests that start work, per client and
minute; default 120, 0 = off), `--max-request-mb` / `PETMATCH_MAX_REQUEST_MB` (a request body; default 200),
`--max-waiting` / `PETMATCH_MAX_WAITING` (model calls that may wait for a worker; default 64). A missing model
disables only its tab, with the reason shown there. Missing or
outdated demo assets are (re)built at start (`app/build_demo_assets.py`).
Inference lives in the library (`match_sets`, `PhotoGallery`, `ImageSearchEngine`); this file holds what the UI's
buttons call, on the models loaded once (`app/loading.py`); the pages' layout is `app/pages.py`, the server `app/server.py`.
"""

from __future__ import annotations

import html
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

from app.gradio_import import skip_stub_regeneration

skip_stub_regeneration()  # before gradio's first import: 1.5-3 s of the cold start (app/gradio_import.py)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from app.api_common import TEXT_LOAD_WAIT_S  # noqa: E402
from app.loading import BackgroundLoad, load_services, load_text  # noqa: E402
from app.pages import PageHandlers  # noqa: E402
from app.security import Busy, StaffKeys, redact_paths  # noqa: E402
from app.server import create_server  # noqa: E402
from app.session_gallery import SessionGallery  # noqa: E402
from app.settings import log, parse_settings  # noqa: E402
from app.shown_images import KIND_WORDS, intake_view, thumbnail  # noqa: E402
from app.uploads import check_count, check_formats, checked_uploads, ui_error, upload_paths  # noqa: E402
from model_pkg.data import ImageLoadError  # noqa: E402
from model_pkg.gallery_store.records import UnknownAnimalError  # noqa: E402
from model_pkg.gallery_store.store import PhotoGallery  # noqa: E402
from model_pkg.pair_matcher.pipeline import match_sets  # noqa: E402

TOP_PAIRS = 5
MAX_QUERY_LENGTH = 1000  # characters of a text-search description
MAX_SESSION_ANIMALS = 20  # demo mode: registrations in one visitor's gallery


# `python app/main.py` reads flags; `gradio app/main.py`, a Space or an import read the environment only.
SETTINGS = parse_settings(sys.argv[1:] if __name__ == "__main__" else [])
try:
    STAFF = StaffKeys.load(os.environ.get("PETMATCH_API_KEYS"), SETTINGS.api_keys_file)
except (OSError, ValueError) as err:  # a missing keys file or a short key: say so and stop, never run without the keys
    raise SystemExit(f"[petmatch] staff keys (PETMATCH_API_KEYS / --api-keys-file): {err}") from err


def _run(fn, *args, **kwargs):
    """Model work through the queue the REST API shares (app.security.ModelWork)."""
    try:
        return services.work.run(fn, *args, **kwargs)
    except Busy as err:
        raise gr.Error(str(err)) from err


# --------------------------------------------------------------------------------------------------
# Models and galleries, loaded once
# --------------------------------------------------------------------------------------------------
# What the UI and the REST API answer with (`app.api_common.Services`): one place, which the background load of the
# text-search model (started at the end of this file) fills in.
services = load_services(SETTINGS, STAFF, log)
pair_model, pair_unavailable = services.pair_model, services.pair_unavailable
gallery, gallery_unavailable = services.gallery, services.gallery_unavailable


# --------------------------------------------------------------------------------------------------
# Set vs set
# --------------------------------------------------------------------------------------------------
def compare_sets(files_a, files_b):
    """Two uploads of 1-20 photos each -> verdict, probability, the most alike photo pair, the top photo pairs."""
    if pair_model is None:
        raise gr.Error(f"Set vs set is unavailable: {redact_paths(pair_unavailable or '')}")
    photos_a, photos_b = upload_paths(files_a), upload_paths(files_b)
    check_count(photos_a, "first set")
    check_count(photos_b, "second set")
    check_formats(photos_a + photos_b)
    try:
        result = _run(match_sets, pair_model, photos_a, photos_b)
    except (ImageLoadError, ValueError) as err:
        raise ui_error(err, photos_a + photos_b) from err
    sim = result.photo_similarity  # (N, M) cosine
    order = np.argsort(-sim, axis=None)[:TOP_PAIRS]
    pairs = [divmod(int(o), len(photos_b)) for o in order]
    i, j = pairs[0]
    verdict = "Same animal" if result.same else "Different animals"
    decided = f", decided as {KIND_WORDS[result.kind]}s" if result.kind in KIND_WORDS else ""
    text = (
        f"{verdict}: probability {result.probability:.1%} (decision threshold {result.threshold:.1%} for "
        f"{len(photos_a)} vs {len(photos_b)} photos{decided}). Most alike: photo {i + 1} of the first set and photo "
        f"{j + 1} of the second (similarity {sim[i, j]:.2f})."
    )
    if result.notes:
        text += " Note: " + "; ".join(result.notes) + "."
    if result.intake_a:  # what the intake saw: the most alike pair first, then every other photo
        order_a = [i] + [k for k in range(len(photos_a)) if k != i]
        order_b = [j] + [k for k in range(len(photos_b)) if k != j]
        views = [intake_view(result.intake_a[k], f"first set, photo {k + 1}") for k in order_a]
        views += [intake_view(result.intake_b[k], f"second set, photo {k + 1}") for k in order_b]
        best = [views[0], views[len(order_a)]] + views[1 : len(order_a)] + views[len(order_a) + 1 :]
    else:
        best = [(thumbnail(photos_a[i]), f"first set, photo {i + 1}"), (thumbnail(photos_b[j]), f"second set, photo {j + 1}")]
    table = [
        [a + 1, os.path.basename(photos_a[a]), b + 1, os.path.basename(photos_b[b]), round(float(sim[a, b]), 3)] for a, b in pairs
    ]
    return text, {"same animal": result.probability, "different animals": 1 - result.probability}, best, table


# --------------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------------
def _require_gallery() -> PhotoGallery:
    if gallery is None:
        raise gr.Error(f"The gallery is unavailable: {redact_paths(gallery_unavailable or '')}")
    return gallery


def as_markdown_text(text: str) -> str:
    """User text shown literally inside Markdown: HTML escaped, Markdown syntax backslash-escaped, so a name
    such as `<img src=x onerror=alert(1)>` or `**x**` is displayed as typed, never rendered."""
    return html.escape(re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", text), quote=False)


def registered_animals(session=None) -> str:
    """The registered animals (a demo visitor's own gallery when it has one); never a folder or other server path."""
    g = session.gallery if session is not None else gallery
    if g is None:
        return f"**Gallery unavailable:** {redact_paths(gallery_unavailable or '')}"
    counts = g.photo_counts()  # reloads what another app process registered meanwhile
    listing = ", ".join(f"{as_markdown_text(name)} ({n})" for name, n in counts.items())
    private = " in your private demo gallery (only you see it; it goes when you close the page)" if session else ""
    return f"**{len(counts)} registered animals**{private} (photos): {listing}"


def identify(photo, session=None):
    """One photo -> verdict sentence, top matches (best photo of each animal, with similarity), details."""
    g = session.gallery if session is not None else _require_gallery()
    if not photo:
        raise gr.Error("Upload a photo of the animal to identify.")
    path = upload_paths([photo])[0]
    check_formats([path])
    try:
        result = _run(g.identify, path)
        matches = [(thumbnail(m.photo), f"{m.label}: similarity {m.score:.2f}") for m in result.matches]
        if result.intake is not None and result.intake.image is not None:  # the query as the intake saw it, last
            matches.append(intake_view(result.intake, "your photo, as the intake saw it"))
    except (ImageLoadError, ValueError) as err:
        raise ui_error(err, [path]) from err
    details = {
        **result.prediction.to_dict(),
        "score_threshold": result.score_threshold,
        "margin_threshold": result.margin_threshold,
    }
    if result.intake is not None:
        seen = result.intake
        details["intake"] = {
            "species": seen.species,
            "kind": seen.kind,
            "box": list(seen.box),
            "reshoot": seen.reshoot,
            "note": seen.note,
        }
    return result.message(), matches, details


def _who(request: gr.Request | None) -> str:
    user = getattr(request, "username", None) or "staff"
    return f"ui {user} ({STAFF_LOGINS.get(user, 'key:?')})"


STAFF_LOGINS: dict[str, str] = {}  # staff page: user name -> the fingerprint of the key it last logged in with


def staff_login(username: str, password: str) -> bool:
    """Gradio's `auth=` of the staff page: any user name, a staff key as the password."""
    who = STAFF.who(password)
    if who is not None:
        STAFF_LOGINS[username] = who
    return who is not None


def register(name, files, species="dog", note="", add_to_existing=False, request: gr.Request = None, progress=gr.Progress()):
    """Staff: a name and 1-20 photos -> a new animal in the shared gallery (saved to disk), or more photos of the
    animal of that name when `add_to_existing` is ticked; a registered name without it is refused with a question."""
    g = _require_gallery()
    photos = checked_uploads(files, "upload")
    try:
        name = PhotoGallery.check_name(name)
        holder = g.find_name(name)
        if holder is not None and not add_to_existing:
            raise gr.Error(
                f"{holder.name} is already registered (id {holder.id}, {len(holder.photos)} photos). Tick 'Add these "
                "photos to the registered animal' to add them to it, or choose another name."
            )
        progress(0, desc="embedding photos")
        report = lambda done, total: progress(done / total, desc="embedding photos")  # noqa: E731
        if holder is not None:
            record = _run(g.add_photos, holder.id, photos, _who(request), progress=report)
        else:
            record = _run(g.register_animal, name, photos, _who(request), species=species, note=note or "", progress=report)
    except (ImageLoadError, ValueError, UnknownAnimalError) as err:
        raise ui_error(err, photos) from err
    return (
        f"Registered {len(photos)} photo(s) of {record.name}; {record.name} now has {len(record.photos)} photo(s) "
        f"in the gallery (id {record.id}).",
        registered_animals(),
    )


def register_in_session(name, files, session, progress=gr.Progress()):
    """Demo mode: a name and 1-20 photos -> registered in the visitor's private gallery, created on first use."""
    g = _require_gallery()
    photos = checked_uploads(files, "upload")
    try:
        name = PhotoGallery.check_name(name)
        if session is None:
            session = SessionGallery(g)
        if len(session.gallery.names) >= len(g.names) + MAX_SESSION_ANIMALS:
            raise gr.Error(
                f"Your demo gallery holds {MAX_SESSION_ANIMALS} animals of yours already: reload the page to start over."
            )
        count = _run(
            session.gallery.register,
            name,
            photos,
            lambda done, total: progress(done / total, desc="embedding photos"),
            by="demo visitor",
        )
    except (ImageLoadError, ValueError) as err:
        raise ui_error(err, photos) from err
    return (
        f"Registered {len(photos)} photo(s) of {name} in your private demo gallery; {name} now has {count} photo(s).",
        registered_animals(session),
        session,
    )


def _animal_choices() -> list[tuple[str, str]]:
    return [(f"{r.name} ({r.species}, {len(r.photos)} photos, id {r.id})", r.id) for r in gallery.animals()] if gallery else []


def update_animal(animal_id, name="", species="", note=None, request: gr.Request = None):
    """Staff: rename an animal or change its species or note (empty fields are left as they are)."""
    g = _require_gallery()
    if not animal_id:
        raise gr.Error("Choose the animal to edit.")
    try:
        record = g.update(animal_id, _who(request), name=name or None, species=species or None, note=note)
    except (ValueError, UnknownAnimalError) as err:
        raise ui_error(err) from err
    return f"Saved: {record.name} ({record.species}, id {record.id}).", registered_animals(), gr.update(choices=_animal_choices())


def delete_animal(animal_id, confirm=False, request: gr.Request = None):
    """Staff: delete an animal and its photos (tick the confirmation first)."""
    g = _require_gallery()
    if not animal_id:
        raise gr.Error("Choose the animal to delete.")
    if not confirm:
        raise gr.Error("Tick 'Yes, delete it' to confirm: the animal and its photos are removed for good.")
    try:
        record = g.animal(animal_id)
        removed = g.delete(animal_id, _who(request))
    except (ValueError, UnknownAnimalError) as err:
        raise ui_error(err) from err
    return (
        f"Deleted {record.name} (id {animal_id}) and its {removed} photo(s).",
        registered_animals(),
        gr.update(choices=_animal_choices(), value=None),
    )


def audit_log(limit=50):
    """Staff: the last changes to the gallery (who, what, when)."""
    entries = _require_gallery().audit_log(int(limit))
    return [
        [e.get("at", ""), e.get("who", ""), e.get("action", ""), e.get("animal", ""), e.get("name", e.get("old_name", ""))]
        for e in reversed(entries)
    ]


# --------------------------------------------------------------------------------------------------
# Text search (written against model_pkg.dual_encoder.search.ImageSearchEngine; kept small and separate)
# --------------------------------------------------------------------------------------------------
def wait_for_text_search(timeout: float = TEXT_LOAD_WAIT_S):
    """-> (TextSearch, None) or (None, why), once the background load is done (or `timeout` s have passed)."""
    services.text_loaded.wait(timeout)
    return services.text, services.text_unavailable


def _text_search_loaded(text, why: str | None) -> None:
    services.text, services.text_unavailable = text, why
    log("text search ready" if text is not None else f"text search unavailable: {why}")


def search_text(query, top_k=8):
    """A description -> the best photos of the index with their scores."""
    if not isinstance(query, str) or not query.strip():
        raise gr.Error("Type a description, e.g. 'a brown dog running on the grass'.")
    if len(query) > MAX_QUERY_LENGTH:
        raise gr.Error(f"The description has {len(query):,} characters; use at most {MAX_QUERY_LENGTH:,} (a sentence or two).")
    text, why = wait_for_text_search()
    if text is None:
        raise gr.Error(f"Text search unavailable: {redact_paths(why or '')}")

    def run():
        with text.lock:
            hits = text.engine.search_database(query.strip(), top_k=int(top_k))
        return [(thumbnail(hit.path), f"{hit.score:.3f}") for hit in hits]

    return _run(run)


# --------------------------------------------------------------------------------------------------
# The pages and the REST API on one server
# --------------------------------------------------------------------------------------------------
# The pages' buttons call the handlers above (`app/pages.py` lays the pages out)
PAGES = PageHandlers(
    compare_sets=compare_sets,
    identify=identify,
    register=register,
    register_in_session=register_in_session,
    update_animal=update_animal,
    delete_animal=delete_animal,
    audit_log=audit_log,
    search_text=search_text,
    registered_animals=registered_animals,
    animal_choices=_animal_choices,
    services=services,
    assets_dir=SETTINGS.assets_dir,
)


def create_app(staff_keys: StaffKeys) -> tuple[FastAPI, gr.Blocks, gr.Blocks | None]:
    """One FastAPI application on the models loaded above (`app/server.py`): the REST API under /api/v1, the staff page
    at /staff/ (with keys) and the visitors' page at / ("demo" mode without keys). -> (app, public page, staff page)."""
    api_services = services if staff_keys is STAFF else replace(services, staff=staff_keys)
    return create_server(api_services, PAGES, SETTINGS, staff_keys, staff_login, ALLOWED_PATHS)


# What the pages may serve besides uploads and their own results: the demo photos of the examples (public). Never
# the data or gallery folders: registered photos are shown as images the app encodes, or through the REST API.
ALLOWED_PATHS = [str(Path(SETTINGS.assets_dir, "demo_photos").expanduser().resolve())]
os.environ.setdefault("GRADIO_ALLOWED_PATHS", ",".join(ALLOWED_PATHS))  # `gradio app/main.py` reads it at launch

# `uvicorn app.main:app` serves the same program.
app, demo, staff_demo = create_app(STAFF)
if not services.text_loaded.is_set():
    BackgroundLoad("the text-search model", lambda: load_text(SETTINGS, log), _text_search_loaded, services.text_loaded).start()

if __name__ == "__main__":
    import uvicorn

    log(f"UI on http://{SETTINGS.host}:{SETTINGS.port}/, REST API under /api/v1 (schema: /docs)")
    uvicorn.run(app, host=SETTINGS.host, port=SETTINGS.port)
