"""petmatch Gradio app: is this the same animal? Three tabs, one per task, models loaded once at start (the
text-search model in the background once the UI is up, so the other tabs answer sooner).

    python app/app.py                 # http://127.0.0.1:7860, offline, the models in models/
    python app/app.py --embedder-model runs/arcface-embedder/model --gallery-dir /tmp/my-gallery --port 7861
    PETMATCH_PAIR_MODEL=<dir or Hub id> gradio app/app.py

1. Set vs set (`/compare_sets`): two uploads of 1-20 photos -> same-animal probability, the decision at the
   model's stored threshold for those set sizes, and which photos agree most.
2. Gallery (`/identify`, `/register`): identify a photo among the registered animals, or "unknown - reshoot"
   with the reason; register a name with photos into a persistent gallery (saved after each registration).
   The demo dogs of `app/assets/` are in it from the first start.
3. Text search (`/search_text`): a description -> the best photos of the demo index (Flickr8k dev + demo dogs).

The same program serves a plain JSON REST API under `/api/v1` (`app/api.py`; OpenAPI schema at `/docs`).

Flags and environment variables: see `app/loading.py`, plus `--concurrency` / `PETMATCH_CONCURRENCY` (requests
of one kind answered at once; default 4) and `--max-batch-size` / `PETMATCH_MAX_BATCH_SIZE` (photos of
concurrent requests embedded in one backbone pass, `model_pkg.batching`; default 32, 0 = no batching: each
request runs its own pass). A missing model disables only its tab, with the reason shown there. Missing or
outdated demo assets are (re)built at start (`app/build_demo_assets.py`).
Inference lives in the library (`match_sets`, `PhotoGallery`, `ImageSearchEngine`); this file is the UI.
"""

from __future__ import annotations

import argparse
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

from app.api import TEXT_LOAD_WAIT_S, Services, create_api  # noqa: E402
from app.loading import BackgroundLoad, load_gallery, load_pair_model, load_text, missing_model, model_flags  # noqa: E402
from model_pkg.batching import batch_concurrent_calls  # noqa: E402
from model_pkg.data import ImageLoadError  # noqa: E402
from model_pkg.gallery_store import PhotoGallery  # noqa: E402
from model_pkg.pair_matcher.pipeline import match_sets  # noqa: E402

MAX_PHOTOS = 20
TOP_PAIRS = 5
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per file; Gradio refuses larger uploads before they reach the models
MAX_QUERY_LENGTH = 1000  # characters of a text-search description


def parse_settings(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_flags(argparse.ArgumentParser(description="petmatch Gradio app"))
    # a Space sets GRADIO_SERVER_NAME=0.0.0.0; elsewhere the app listens on this machine only
    parser.add_argument("--host", default=os.environ.get("PETMATCH_HOST", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PETMATCH_PORT", "7860")))
    parser.add_argument(
        "--concurrency",
        type=int,
        # 4, not 8: concurrent requests share backbone passes anyway, and with the 224 px embedder 8 threads
        # grew the process by 430-470 MB under load (glibc heaps per thread) where 4 stay within the bound
        # (bench/README.md, "App under load")
        default=int(os.environ.get("PETMATCH_CONCURRENCY", "4")),
        help="requests of each kind (compare, identify, register, search) run at once; more wait in Gradio's queue "
        "(env PETMATCH_CONCURRENCY; default 4)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=int(os.environ.get("PETMATCH_MAX_BATCH_SIZE", "32")),
        help="photos of concurrent requests embedded in one backbone pass at most; 0 = each request runs its own "
        "pass (env PETMATCH_MAX_BATCH_SIZE; default 32)",
    )
    settings = parser.parse_args(argv)
    if settings.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {settings.concurrency}")
    if settings.max_batch_size < 0:
        parser.error(f"--max-batch-size must be 0 (no batching) or more, got {settings.max_batch_size}")
    return settings


def log(message: str) -> None:
    print(f"[petmatch] {message}", flush=True)


# `python app/app.py` reads flags; `gradio app/app.py`, a Space or an import read the environment only.
SETTINGS = parse_settings(sys.argv[1:] if __name__ == "__main__" else [])


def _paths(files) -> list[str]:
    return [f if isinstance(f, str) else getattr(f, "name", None) or f["path"] for f in (files or [])]


def _check_count(photos: list[str], what: str) -> None:
    if not photos:
        raise gr.Error(f"The {what} is empty: upload at least one photo.")
    if len(photos) > MAX_PHOTOS:
        raise gr.Error(f"The {what} has {len(photos)} photos; upload at most {MAX_PHOTOS}.")


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
# What the UI and the REST API answer with (`app.api.Services`): one place, which the background load fills in.
services = Services(pair_model, pair_unavailable, gallery, gallery_unavailable, text_loaded=threading.Event())
services.text_unavailable = missing_model(SETTINGS.dual_model, "dual encoder", "--dual-model")
if services.text_unavailable:
    log(f"text search unavailable: {services.text_unavailable}")
    services.text_loaded.set()
else:
    services.text_unavailable = "the text-search model is still loading; try again in a few seconds"
if SETTINGS.max_batch_size > 0:
    # Concurrent requests share one backbone pass instead of each running its own, several at once, on the same
    # cores; a lone request runs at once (bench/README.md, "App under load" compares the options).
    if pair_model is not None:
        batch_concurrent_calls(pair_model, "embed_photos", SETTINGS.max_batch_size)
    if gallery is not None:
        batch_concurrent_calls(gallery.embedder, "get_image_features", SETTINGS.max_batch_size)


# --------------------------------------------------------------------------------------------------
# Set vs set
# --------------------------------------------------------------------------------------------------
def compare_sets(files_a, files_b):
    """Two uploads of 1-20 photos each -> verdict, probability, the most alike photo pair, the top photo pairs."""
    if pair_model is None:
        raise gr.Error(f"Set vs set is unavailable: {pair_unavailable}")
    photos_a, photos_b = _paths(files_a), _paths(files_b)
    _check_count(photos_a, "first set")
    _check_count(photos_b, "second set")
    try:
        result = match_sets(pair_model, photos_a, photos_b)
    except (ImageLoadError, ValueError) as err:
        raise gr.Error(str(err)) from err
    sim = result.photo_similarity  # (N, M) cosine
    order = np.argsort(-sim, axis=None)[:TOP_PAIRS]
    pairs = [divmod(int(o), len(photos_b)) for o in order]
    i, j = pairs[0]
    verdict = "Same animal" if result.same else "Different animals"
    text = (
        f"{verdict}: probability {result.probability:.1%} (decision threshold {result.threshold:.1%} for "
        f"{len(photos_a)} vs {len(photos_b)} photos). Most alike: photo {i + 1} of the first set and photo "
        f"{j + 1} of the second (similarity {sim[i, j]:.2f})."
    )
    best = [(photos_a[i], f"first set, photo {i + 1}"), (photos_b[j], f"second set, photo {j + 1}")]
    table = [
        [a + 1, os.path.basename(photos_a[a]), b + 1, os.path.basename(photos_b[b]), round(float(sim[a, b]), 3)] for a, b in pairs
    ]
    return text, {"same animal": result.probability, "different animals": 1 - result.probability}, best, table


# --------------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------------
def _require_gallery() -> PhotoGallery:
    if gallery is None:
        raise gr.Error(f"The gallery is unavailable: {gallery_unavailable}")
    return gallery


def as_markdown_text(text: str) -> str:
    """User text shown literally inside Markdown: HTML escaped, Markdown syntax backslash-escaped, so a name
    such as `<img src=x onerror=alert(1)>` or `**x**` is displayed as typed, never rendered."""
    return html.escape(re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", text), quote=False)


def registered_animals() -> str:
    if gallery is None:
        return f"**Gallery unavailable:** {gallery_unavailable}"
    counts = gallery.photo_counts()  # reloads what another app process registered meanwhile
    listing = ", ".join(f"{as_markdown_text(name)} ({n})" for name, n in counts.items())
    return f"**{len(counts)} registered animals** (photos): {listing}\n\nGallery folder: `{gallery.directory}`"


def identify(photo):
    """One photo -> verdict sentence, top matches (best photo of each animal, with similarity), details."""
    g = _require_gallery()
    if not photo:
        raise gr.Error("Upload a photo of the animal to identify.")
    path = _paths([photo])[0]
    try:
        result = g.identify(path)
    except (ImageLoadError, ValueError) as err:
        raise gr.Error(str(err)) from err
    matches = [(m.photo, f"{m.label}: similarity {m.score:.2f}") for m in result.matches]
    details = {
        **result.prediction.to_dict(),
        "score_threshold": result.score_threshold,
        "margin_threshold": result.margin_threshold,
    }
    return result.message(), matches, details


def register(name, files, progress=gr.Progress()):
    """A name and 1-20 photos -> registered (saved to disk) -> status line and the updated list."""
    g = _require_gallery()
    photos = _paths(files)
    _check_count(photos, "upload")
    try:
        name = PhotoGallery.check_name(name)
        progress(0, desc="embedding photos")
        count = g.register(name, photos, progress=lambda done, total: progress(done / total, desc="embedding photos"))
    except (ImageLoadError, ValueError) as err:
        raise gr.Error(str(err)) from err
    return f"Registered {len(photos)} photo(s) of {name}; {name} now has {count} photo(s) in the gallery.", registered_animals()


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
        raise gr.Error(f"Text search unavailable: {why}")
    with text.lock:
        hits = text.engine.search_database(query.strip(), top_k=int(top_k))
    return [(hit.path, f"{hit.score:.3f}") for hit in hits]


def build_text_search_tab() -> None:
    if services.text_loaded.is_set() and services.text is None:  # known at start: no model there to load
        gr.Markdown(f"**Text search unavailable:** {services.text_unavailable}")
    query = gr.Textbox(label="Describe the photo", placeholder="a brown dog running on the grass", elem_id="text-query")
    top_k = gr.Slider(1, 24, value=8, step=1, label="Photos to show")
    button = gr.Button("Search", variant="primary")
    results = gr.Gallery(label="Best matching photos (score)", columns=4, height="auto", elem_id="text-results")
    button.click(search_text, inputs=[query, top_k], outputs=results, api_name="search_text")
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
    return sorted(os.listdir(folder), key=lambda d: int(d) if d.isdigit() else d) if folder.is_dir() else []


def build_demo() -> gr.Blocks:
    gallery_dogs, new_dogs = _dogs("gallery"), _dogs("new")
    # uploads and result copies older than an hour are removed hourly, so a long-running app does not fill the disk
    with gr.Blocks(title="petmatch", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# petmatch\nIs this the same animal? Compare two photo sets, identify an animal in a gallery, "
            "or search photos by description."
        )
        with gr.Tab("Set vs set"):
            if pair_model is None:
                gr.Markdown(f"**Set vs set unavailable:** {pair_unavailable}")
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
            best_pair = gr.Gallery(label="The two photos that agree most", columns=2, height=300, object_fit="contain")
            top_pairs = gr.Dataframe(
                headers=["first set #", "photo", "second set #", "photo", "similarity"],
                label="Photo pairs that agree most",
                interactive=False,
            )
            compare.click(
                compare_sets, inputs=[set_a, set_b], outputs=[verdict, probability, best_pair, top_pairs], api_name="compare_sets"
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
                with gr.Column():
                    gr.Markdown("### Register")
                    name = gr.Textbox(label="Name", placeholder="Bella")
                    register_files = gr.File(file_count="multiple", file_types=["image"], label="Photos (1-20)")
                    register_button = gr.Button("Register")
                    register_status = gr.Textbox(label="Registration")
                    if len(new_dogs) >= 2:
                        gr.Examples([["Rex", _demo_photos("new", new_dogs[1])[:3]]], inputs=[name, register_files])
            answer = gr.Textbox(label="Answer", elem_id="answer")
            matches = gr.Gallery(
                label="Top matches (best photo of each animal)", columns=5, height=260, object_fit="contain", elem_id="matches"
            )
            details = gr.JSON(label="Details")
            identify_button.click(identify, inputs=query, outputs=[answer, matches, details], api_name="identify")
            register_button.click(
                register, inputs=[name, register_files], outputs=[register_status, animals], api_name="register"
            )

        with gr.Tab("Text search"):
            build_text_search_tab()
    return demo


# Requests of each kind run SETTINGS.concurrency at a time (Gradio's default is 1: every user waits for the one
# before); the models are shared read-only between the threads, the gallery has its own lock.
demo = build_demo().queue(default_concurrency_limit=SETTINGS.concurrency)
# folders whose photos the app shows (thumbnails, examples, search results)
ALLOWED_PATHS = [str(Path(p).expanduser().resolve()) for p in (SETTINGS.assets_dir, SETTINGS.data, SETTINGS.gallery_dir)]
# the same for `gradio app/app.py` and Spaces, which launch `demo` themselves (gradio reads this at launch)
os.environ.setdefault("GRADIO_ALLOWED_PATHS", ",".join(ALLOWED_PATHS))

# One FastAPI application: the JSON REST API under /api/v1 (`app/api.py`, schema at /docs) and the UI at /,
# both on the models loaded above. `uvicorn app.app:app` serves the same program.
api = create_api(services)
app = gr.mount_gradio_app(api, demo, path="/", allowed_paths=ALLOWED_PATHS, max_file_size=MAX_UPLOAD_BYTES)
if not services.text_loaded.is_set():
    BackgroundLoad("the text-search model", lambda: load_text(SETTINGS, log), _text_search_loaded, services.text_loaded).start()

if __name__ == "__main__":
    import uvicorn

    log(f"UI on http://{SETTINGS.host}:{SETTINGS.port}/, REST API under /api/v1 (schema: /docs)")
    uvicorn.run(app, host=SETTINGS.host, port=SETTINGS.port)
