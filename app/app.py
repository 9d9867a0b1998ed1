"""petmatch Gradio app: is this the same animal? Three tabs, one per task, models loaded once at start (the
text-search model in the background once the UI is up, so the other tabs answer sooner).

    python app/app.py                 # http://127.0.0.1:7860, offline, the models in models/
    python app/app.py --embedder-model runs/arcface-embedder/model --gallery-dir /tmp/my-gallery --port 7861
    PETMATCH_PAIR_MODEL=<dir or Hub id> gradio app/app.py

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
Inference lives in the library (`match_sets`, `PhotoGallery`, `ImageSearchEngine`); this file is the UI.
"""

from __future__ import annotations

import html
import os
import re
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # first, so `app` is this package even when run as `python app/app.py`

from app.gradio_import import skip_stub_regeneration  # noqa: E402

skip_stub_regeneration()  # before gradio's first import: 1.5-3 s of the cold start (app/gradio_import.py)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from app.api import create_api  # noqa: E402
from app.api_common import TEXT_LOAD_WAIT_S, Services  # noqa: E402
from app.loading import BackgroundLoad, load_gallery, load_pair_model, load_text, missing_model  # noqa: E402
from app.security import Busy, ModelWork, RateLimit, StaffKeys, TokenBuckets, redact_paths  # noqa: E402
from app.session_gallery import SessionGallery, close_session  # noqa: E402
from app.settings import log, parse_settings  # noqa: E402
from app.shown_images import KIND_WORDS, intake_view, thumbnail  # noqa: E402
from app.uploads import check_count, check_formats, checked, ui_error, upload_paths  # noqa: E402
from model_pkg.batching import batch_concurrent_calls  # noqa: E402
from model_pkg.data import ImageLoadError  # noqa: E402
from model_pkg.gallery_store.records import SPECIES, UnknownAnimalError  # noqa: E402
from model_pkg.gallery_store.store import PhotoGallery  # noqa: E402
from model_pkg.intake.embedding import model_intake  # noqa: E402
from model_pkg.intake.reference import reference_features  # noqa: E402
from model_pkg.pair_matcher.pipeline import match_sets  # noqa: E402

TOP_PAIRS = 5
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per file; Gradio refuses larger uploads before they reach the models
MAX_QUERY_LENGTH = 1000  # characters of a text-search description
MAX_SESSION_ANIMALS = 20  # demo mode: registrations in one visitor's gallery


# `python app/app.py` reads flags; `gradio app/app.py`, a Space or an import read the environment only.
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
log("loading models ...")
pair_model, pair_unavailable = load_pair_model(SETTINGS.pair_model)
gallery, gallery_unavailable = load_gallery(SETTINGS, log)
for tab, why in (("set vs set", pair_unavailable), ("gallery", gallery_unavailable)):
    if why:
        log(f"{tab} unavailable: {why}")
# The text-search model loads in the background once the UI is built (started at the end of this file): the other
# tabs answer meanwhile, and a search that comes first waits for it (cold start, bench/README.md).
# What the UI and the REST API answer with (`app.api_common.Services`): one place, which the background load fills in.
log(f"{len(STAFF)} staff key(s): staff page at /staff/" if STAFF.enabled else "no staff keys: public demo mode")
services = Services(
    pair_model,
    pair_unavailable,
    gallery,
    gallery_unavailable,
    text_loaded=threading.Event(),
    staff=STAFF,
    work=ModelWork(SETTINGS.concurrency, SETTINGS.max_waiting),
)
services.text_unavailable = missing_model(SETTINGS.dual_model, "dual encoder", "--dual-model")
if services.text_unavailable:
    log(f"text search unavailable: {services.text_unavailable}")
    services.text_loaded.set()
else:
    services.text_unavailable = "the text-search model is still loading; try again in a few seconds"
if SETTINGS.max_batch_size > 0:
    # Concurrent requests share one backbone pass instead of each running its own, several at once, on the same
    # cores; a lone request runs at once (bench/README.md, "Load").
    if pair_model is not None:
        batch_concurrent_calls(pair_model, "embed_photos", SETTINGS.max_batch_size)
    if gallery is not None:
        batch_concurrent_calls(gallery.embedder, "get_image_features", SETTINGS.max_batch_size)
    models = [m for m in (pair_model, gallery.embedder if gallery is not None else None) if m is not None]
    if any(model_intake(m) is not None for m in models):
        # the intake's untrained network looks at every photo first (whole view, crop): one pass for all requests too
        batch_concurrent_calls(reference_features(), "forward_features", SETTINGS.max_batch_size)


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
    photos = upload_paths(files)
    check_count(photos, "upload")
    check_formats(photos)
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
    photos = upload_paths(files)
    check_count(photos, "upload")
    check_formats(photos)
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


def build_text_search_tab() -> None:
    if services.text_loaded.is_set() and services.text is None:  # known at start: no model there to load
        gr.Markdown(f"**Text search unavailable:** {redact_paths(services.text_unavailable or '')}")
    query = gr.Textbox(label="Describe the photo", placeholder="a brown dog running on the grass", elem_id="text-query")
    top_k = gr.Slider(1, 24, value=8, step=1, label="Photos to show")
    button = gr.Button("Search", variant="primary")
    results = gr.Gallery(label="Best matching photos (score)", columns=4, height="auto", elem_id="text-results")
    button.click(checked(search_text), inputs=[query, top_k], outputs=results, api_name="search_text")
    gr.Examples([["a dog running on the grass", 8], ["two children playing in the water", 8]], inputs=[query, top_k])


# --------------------------------------------------------------------------------------------------
# The UI
# --------------------------------------------------------------------------------------------------
def _demo_photos(*parts: str) -> list[str]:
    folder = Path(SETTINGS.assets_dir, "demo_photos", *parts)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*.jpg"))
    return [str(p) for p in files]


def _dogs(role: str) -> list[str]:
    folder = Path(SETTINGS.assets_dir, "demo_photos", role)
    # numbered dogs first, in number order, then named ones (cat-birba, mpdd-56): a key of int or str alone fails on both
    return sorted(os.listdir(folder), key=lambda d: (0, int(d), "") if d.isdigit() else (1, 0, d)) if folder.is_dir() else []


def build_demo(mode: str = "public") -> gr.Blocks:
    """The UI: "public" (visitors: match, identify, search), "demo" (the same, plus registering into a gallery
    private to the browser session; the app without staff keys) or "staff" (plus register, edit, delete and the
    audit log on the shared gallery; served at /staff/ behind Gradio's login)."""
    gallery_dogs, new_dogs = _dogs("gallery"), _dogs("new")
    staff = mode == "staff"
    # uploads and result copies older than an hour are removed hourly, so a long-running app does not fill the disk
    with gr.Blocks(title="petmatch (staff)" if staff else "petmatch", delete_cache=(3600, 3600)) as demo:
        intro = {
            "public": "Registering animals is for staff.",
            "demo": "This is a public demo: animals you register stay in a gallery only you see, gone when you close the page.",
            "staff": "**Staff page**: register, edit and delete animals in the shared gallery; every change is logged.",
        }[mode]
        gr.Markdown(
            "# petmatch\nIs this the same animal? Compare two photo sets, identify an animal in a gallery, "
            f"or search photos by description. {intro}"
        )
        session = gr.State(None, time_to_live=3600, delete_callback=close_session) if mode == "demo" else None
        with gr.Tab("Set vs set"):
            if pair_model is None:
                gr.Markdown(f"**Set vs set unavailable:** {redact_paths(pair_unavailable or '')}")
            with gr.Row():
                set_a = gr.File(
                    file_count="multiple", file_types=["image"], label="Photos of the first animal (1-20)", elem_id="set-a"
                )
                set_b = gr.File(
                    file_count="multiple", file_types=["image"], label="Photos of the second animal (1-20)", elem_id="set-b"
                )
            compare = gr.Button("Compare", variant="primary", elem_id="compare")
            verdict = gr.Textbox(label="Verdict", elem_id="verdict")
            probability = gr.Label(label="Probability")
            best_pair = gr.Gallery(
                label="What the intake saw (crops): the two photos that agree most first",
                columns=4,
                height=300,
                object_fit="contain",
                elem_id="best-pair",
            )
            top_pairs = gr.Dataframe(
                headers=["first set #", "photo", "second set #", "photo", "similarity"],
                label="Photo pairs that agree most",
                interactive=False,
            )
            compare.click(
                checked(compare_sets, 0, 1),
                inputs=[set_a, set_b],
                outputs=[verdict, probability, best_pair, top_pairs],
                api_name="compare_sets",
            )
            if len(gallery_dogs) >= 2:
                same = _demo_photos("gallery", gallery_dogs[0]), _demo_photos("queries", gallery_dogs[0])
                other = _demo_photos("gallery", gallery_dogs[1])
                gr.Examples([[same[0][:2], same[1][:2]], [same[0][:2], other[:2]]], inputs=[set_a, set_b])

        with gr.Tab("Gallery"):
            animals = gr.Markdown(registered_animals())
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Identify")
                    # a File, not an Image: gr.Image decodes uploads itself, so a bad file would get its generic
                    # error instead of ours naming the file and the problem
                    query = gr.File(file_types=["image"], label="Photo of the animal to identify", elem_id="identify-photo")
                    identify_button = gr.Button("Identify", variant="primary", elem_id="identify")
                    if gallery_dogs and new_dogs:
                        gr.Examples(
                            [_demo_photos("queries", gallery_dogs[0])[:1], _demo_photos("new", new_dogs[0])[:1]],
                            inputs=[query],
                            label="A registered dog (new photo) / a dog not in the gallery",
                        )
                if mode != "public":
                    with gr.Column():
                        gr.Markdown("### Register" + (" (your private demo gallery)" if mode == "demo" else ""))
                        name = gr.Textbox(label="Name", placeholder="Bella", elem_id="register-name")
                        register_files = gr.File(
                            file_count="multiple", file_types=["image"], label="Photos (1-20)", elem_id="register-photos"
                        )
                        if staff:
                            species = gr.Dropdown(list(SPECIES), value="dog", label="Species")
                            note = gr.Textbox("", label="Staff note (never shown publicly, e.g. how to reach the finder)")
                            add_existing = gr.Checkbox(False, label="Add these photos to the registered animal of this name")
                        register_button = gr.Button("Register", elem_id="register")
                        register_status = gr.Textbox(label="Registration", elem_id="register-status")
                        if len(new_dogs) >= 2:
                            gr.Examples([["Rex", _demo_photos("new", new_dogs[1])[:3]]], inputs=[name, register_files])
            answer = gr.Textbox(label="Answer", elem_id="answer")
            matches = gr.Gallery(
                label="Top matches (best photo of each animal)", columns=5, height=260, object_fit="contain", elem_id="matches"
            )
            details = gr.JSON(label="Details")
            if mode == "demo":
                identify_button.click(
                    checked(identify, 0), inputs=[query, session], outputs=[answer, matches, details], api_name="identify"
                )
                register_button.click(
                    checked(register_in_session, 1),
                    inputs=[name, register_files, session],
                    outputs=[register_status, animals, session],
                    api_name="register",
                )
            else:
                identify_button.click(checked(identify, 0), inputs=query, outputs=[answer, matches, details], api_name="identify")
            if staff:
                register_button.click(
                    checked(register, 1),
                    inputs=[name, register_files, species, note, add_existing],
                    outputs=[register_status, animals],
                    api_name="register",
                )
                build_staff_tools(animals)

        with gr.Tab("Text search"):
            build_text_search_tab()
    return demo


def build_staff_tools(animals: gr.Markdown) -> None:
    """Edit, delete and the audit log, under the gallery tab of the staff page."""
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Edit an animal")
            # ids are checked by the gallery (unknown: a clear error), so a script may pass any id
            edit_id = gr.Dropdown(_animal_choices(), value=None, label="Animal", elem_id="edit-animal", allow_custom_value=True)
            new_name = gr.Textbox(label="New name (empty: unchanged)")
            new_species = gr.Dropdown(["", *SPECIES], value="", label="Species (empty: unchanged)")
            new_note = gr.Textbox(label="Staff note (replaces the old one)")
            save = gr.Button("Save")
            edit_status = gr.Textbox(label="Edit")
        with gr.Column():
            gr.Markdown("### Delete an animal")
            delete_id = gr.Dropdown(
                _animal_choices(), value=None, label="Animal", elem_id="delete-animal", allow_custom_value=True
            )
            confirm = gr.Checkbox(False, label="Yes, delete it and its photos")
            delete = gr.Button("Delete", variant="stop")
            delete_status = gr.Textbox(label="Delete")
    save.click(
        checked(update_animal),
        inputs=[edit_id, new_name, new_species, new_note],
        outputs=[edit_status, animals, edit_id],
        api_name="update_animal",
    )
    delete.click(
        checked(delete_animal), inputs=[delete_id, confirm], outputs=[delete_status, animals, delete_id], api_name="delete_animal"
    )
    for dropdown in (edit_id, delete_id):  # the animals as they are when the page is opened
        dropdown.focus(lambda: gr.update(choices=_animal_choices()), outputs=dropdown, api_name=False)
    gr.Markdown("### Audit log (newest first)")
    refresh = gr.Button("Refresh")
    log_table = gr.Dataframe(headers=["when (UTC)", "who", "what", "animal id", "name"], interactive=False)
    refresh.click(checked(audit_log), inputs=None, outputs=log_table, api_name="audit_log")


def mount(api: FastAPI, demo: gr.Blocks, path: str, **kwargs) -> FastAPI:
    """`gr.mount_gradio_app` with Gradio's own upload check on: it only runs for Blocks marked as launched, which
    `launch()` does and mounting does not, so without this any server file could be named as a file input."""
    app = gr.mount_gradio_app(api, demo, path=path, allowed_paths=ALLOWED_PATHS, max_file_size=MAX_UPLOAD_BYTES, **kwargs)
    demo.has_launched = True
    return app


def create_app(staff_keys: StaffKeys) -> tuple[FastAPI, gr.Blocks, gr.Blocks | None]:
    """One FastAPI application on the models loaded above: the REST API under /api/v1, the staff page at /staff/
    (with keys) and the visitors' page at / ("demo" mode without keys). -> (app, public page, staff page)."""
    limit = int(SETTINGS.max_request_mb * 2**20)
    api = create_api(services if staff_keys is STAFF else _with_keys(staff_keys), max_request_bytes=limit)
    # bursts of two minutes' worth: 8 clients x 25 calls of bench/bench_app_load.py, one address, pass
    buckets = TokenBuckets(SETTINGS.rate_limit, max(1, int(2 * SETTINGS.rate_limit))) if SETTINGS.rate_limit > 0 else None
    api.add_middleware(RateLimit, buckets=buckets, staff=staff_keys)
    # Requests of each kind run SETTINGS.concurrency at a time (Gradio's default is 1); the REST API and every page
    # share `services.work`, which bounds the model work of all of them together.
    public = build_demo("public" if staff_keys.enabled else "demo").queue(default_concurrency_limit=SETTINGS.concurrency)
    staff_page = None
    if staff_keys.enabled:
        staff_page = build_demo("staff").queue(default_concurrency_limit=SETTINGS.concurrency)
        api = mount(
            api,
            staff_page,
            "/staff",
            auth=staff_login,
            auth_message="petmatch staff: any user name, a staff key as the password.",
        )
    return mount(api, public, "/"), public, staff_page


def _with_keys(staff_keys: StaffKeys) -> Services:
    from dataclasses import replace

    return replace(services, staff=staff_keys)


# What the pages may serve besides uploads and their own results: the demo photos of the examples (public). Never
# the data or gallery folders: registered photos are shown as images the app encodes, or through the REST API.
ALLOWED_PATHS = [str(Path(SETTINGS.assets_dir, "demo_photos").expanduser().resolve())]
os.environ.setdefault("GRADIO_ALLOWED_PATHS", ",".join(ALLOWED_PATHS))  # `gradio app/app.py` reads it at launch

# `uvicorn app.app:app` serves the same program.
app, demo, staff_demo = create_app(STAFF)
if not services.text_loaded.is_set():
    BackgroundLoad("the text-search model", lambda: load_text(SETTINGS, log), _text_search_loaded, services.text_loaded).start()

if __name__ == "__main__":
    import uvicorn

    log(f"UI on http://{SETTINGS.host}:{SETTINGS.port}/, REST API under /api/v1 (schema: /docs)")
    uvicorn.run(app, host=SETTINGS.host, port=SETTINGS.port)
