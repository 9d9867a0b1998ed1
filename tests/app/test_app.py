"""The Gradio app's functions, called in-process on real photos (see app_server.py for the setup)."""

from __future__ import annotations

import os

import pytest

gr = pytest.importorskip("gradio")

from app.shown_images import SHOWN_DIR, THUMBNAIL_SIDE  # noqa: E402
from tests.app_server import app_module  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return app_module()


def shown_size(path: str) -> int:
    """The longest side of an image the app shows: a file it wrote itself, never one of the data or gallery folders."""
    from PIL import Image

    assert path.startswith(str(SHOWN_DIR))
    with Image.open(path) as image:
        return max(image.size)


def photos(dog_faces, dog):
    """A dog's photos in tests/photos/dog_faces (test-split dogs, never trained on; each test file uses its own)."""
    folder = dog_faces / dog
    return [str(folder / f) for f in sorted(os.listdir(folder))]


def test_demo_builds_with_named_api(app):
    """Visitors' page: match, identify, search; the staff page adds the gallery's writes (issue 33)."""
    assert isinstance(app.demo, gr.Blocks) and isinstance(app.staff_demo, gr.Blocks)
    public = {d.get("api_name") for d in app.demo.config["dependencies"]}
    staff = {d.get("api_name") for d in app.staff_demo.config["dependencies"]}
    assert {"compare_sets", "identify", "search_text"} <= public and "register" not in public
    assert {"compare_sets", "identify", "search_text", "register", "update_animal", "delete_animal", "audit_log"} <= staff


def test_same_and_different_dogs(app, dog_faces):
    dog0, dog5 = photos(dog_faces, "327"), photos(dog_faces, "335")
    same_text, same, best, table = app.compare_sets(dog0[:2], dog0[2:4])
    diff_text, diff, _, _ = app.compare_sets(dog0[:2], dog5[:2])
    assert same_text.startswith("Same animal") and same["same animal"] > 0.9
    assert diff_text.startswith("Different animals") and diff["same animal"] < 0.1
    # which photos agree most: the best pair first, shown as two thumbnails, and the top pairs (4 pairs here)
    # what the intake saw beside the answer: the best pair's crops first, then the other photos, each with its kind
    assert [caption.split(",")[0] for _, caption in best] == ["first set", "second set", "first set", "second set"]
    assert all("dog face" in caption for _, caption in best) and all(shown_size(image) <= THUMBNAIL_SIDE for image, _ in best)
    assert len(table) == 4 and table[0][4] == max(row[4] for row in table)
    assert "decision threshold 50.0% for 2 vs 2 photos, decided as dog faces" in same_text


def test_one_to_twenty_photos_per_side(app, dog_faces):
    dogs = [d for d in sorted(os.listdir(dog_faces)) if d != "327"][:5]
    many = [p for dog in dogs for p in photos(dog_faces, dog)][:20]
    text, probability, _, table = app.compare_sets(photos(dog_faces, "327")[:1], many)
    assert "1 vs 20 photos" in text and len(table) == 5
    assert text.startswith("Different animals") and probability["same animal"] < 0.1  # 5 other dogs
    text, probability, _, _ = app.compare_sets(photos(dog_faces, "327")[:1], photos(dog_faces, "327")[1:] * 4)
    assert "1 vs 20 photos" in text and text.startswith("Same animal") and probability["same animal"] > 0.9


def test_bad_uploads_get_friendly_errors(app, dog_faces, tmp_path):
    dog0 = photos(dog_faces, "327")
    with pytest.raises(gr.Error, match="first set is empty"):
        app.compare_sets([], dog0[:1])
    with pytest.raises(gr.Error, match="at most 20"):
        app.compare_sets(dog0[:1], dog0[:1] * 21)
    note = tmp_path / "note.jpg"
    note.write_text("not a photo")
    with pytest.raises(gr.Error, match="note.jpg.*not an image in an accepted format: only JPEG, PNG, WEBP"):
        app.compare_sets([str(note)], dog0[:1])
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(open(dog0[0], "rb").read()[:2000])
    with pytest.raises(gr.Error, match="cut.jpg.*corrupt or truncated"):
        app.identify(str(cut))
    with pytest.raises(gr.Error, match="Upload a photo"):
        app.identify(None)
    with pytest.raises(gr.Error, match="Give the animal a name"):
        app.register("  ", dog0[:1])
    size = len(app.gallery)
    with pytest.raises(gr.Error, match="note.jpg"):
        app.register("Spot", [dog0[0], str(note)])
    assert len(app.gallery) == size and "Spot" not in app.gallery.names  # nothing half-registered


def test_register_then_identify(app, dog_faces):
    """A dog registered with 3 photos is found from its 4th; a dog never registered is rejected."""
    new = app.gallery.directory
    pepper = photos(dog_faces, "408")
    status, listing = app.register("Pepper", pepper[:3])
    assert "Registered 3 photo(s) of Pepper" in status and "Pepper (3)" in listing
    assert str(new) not in listing and "/" not in listing  # no server path on the page (issue 33)
    from model_pkg.gallery_store import PhotoGallery

    reopened = PhotoGallery(new, app.gallery.embedder)  # saved to disk before register returned
    assert reopened.index.labels.count("Pepper") == 3
    answer, matches, details = app.identify(pepper[3])
    assert answer.startswith("Identified: Pepper") and details["label"] == "Pepper"
    # thumbnails are images the app encodes, never paths into the gallery folder (which the app does not serve)
    assert matches[0][1].startswith("Pepper: similarity") and shown_size(matches[0][0]) <= THUMBNAIL_SIDE
    assert not matches[0][0].startswith(str(new))
    answer, _, details = app.identify(photos(dog_faces, "403")[0])
    assert answer.startswith("Unknown animal - reshoot") and details["reason"] == "unknown"


def test_text_search_answers_from_the_shipped_index(app):
    """The shipped dual encoder and text index answer (no rebuild), with photos that ship with the repository."""
    text, why = app.wait_for_text_search()
    assert text is not None, why
    hits = app.search_text("a dog running on the grass", 3)
    assert len(hits) == 3 and all(shown_size(image) <= THUMBNAIL_SIDE for image, _ in hits)
    assert [float(score) for _, score in hits] == sorted((float(score) for _, score in hits), reverse=True)
    found = text.engine.search_database("a dog running on the grass", top_k=3)
    assets = os.path.realpath(app.SETTINGS.assets_dir)
    assert all(os.path.realpath(hit.path).startswith(assets + os.sep) and os.path.isfile(hit.path) for hit in found)


def test_text_search_unavailable_says_why(app, monkeypatch):
    monkeypatch.setattr(app.services, "text", None)
    monkeypatch.setattr(app.services, "text_unavailable", "no dual encoder at dual-encoder")
    with pytest.raises(gr.Error, match="Text search unavailable: no dual encoder at dual-encoder"):
        app.search_text("a dog running on the grass", 3)
    from app.loading import load_text_search

    engine, why = load_text_search("/nonexistent/dual-encoder")
    assert engine is None and ("dual-encoder package" in why or "no dual encoder at /nonexistent" in why)


def test_model_flags_resolve_paths_env_and_hub_ids(app, monkeypatch, hub_offline):
    from app.loading import ROOT, load_embedder, load_pair_model, resolve_model
    from app.settings import parse_settings

    assert resolve_model("models/pair-matcher") == str(ROOT / "models" / "pair-matcher")
    assert resolve_model("someone/pet-embedder") == "someone/pet-embedder"  # a Hub id
    model, why = load_embedder("models/no-such-embedder")
    assert model is None and "--embedder-model or PETMATCH_EMBEDDER_MODEL" in why
    model, why = load_embedder(str(ROOT / "models" / "pair-matcher"))
    assert model is None and "holds a 'petmatch_pair_matcher' model, not a ArcFaceEmbedderModel" in why
    monkeypatch.setenv("PETMATCH_PAIR_MODEL", "/elsewhere/pair")
    assert parse_settings([]).pair_model == "/elsewhere/pair"
    assert parse_settings(["--pair-model", "x/y"]).pair_model == "x/y"
    model, why = load_pair_model("someone/not-on-this-offline-machine")
    assert model is None and "could not load the pair matcher from 'someone/not-on-this-offline-machine'" in why


def test_hostile_names_are_shown_as_text_and_long_queries_refused(app, dog_faces):
    """Issue 15: a name with HTML/JavaScript or Markdown is listed literally (escaped), never rendered;
    a 100k-character description gets a clear message instead of minutes of tokenising."""
    hostile = "<img src=x onerror=alert(1)> **x**"
    status, listing = app.register(hostile, photos(dog_faces, "392")[:1])
    assert "Registered 1 photo(s)" in status
    assert "<img" not in listing and "&lt;img src=x onerror=alert\\(1\\)&gt; \\*\\*x\\*\\*" in listing
    assert hostile in app.gallery.names  # stored as typed; only its display is escaped
    with pytest.raises(gr.Error, match="at most 1,000"):
        app.search_text("a dog " * 20_000, 3)


def test_concurrent_requests_run_together_with_the_same_answers(app, dog_faces):
    """Issue 14: requests run `--concurrency` at a time and share backbone passes; each gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    from app.settings import parse_settings
    from model_pkg.batching import BatchedForward

    assert app.SETTINGS.concurrency == 4 and app.demo._queue.default_concurrency_limit == 4
    assert isinstance(app.pair_model.embed_photos, BatchedForward)
    assert isinstance(app.gallery.embedder.get_image_features, BatchedForward)
    dogs = [photos(dog_faces, d) for d in ("327", "335", "367")]
    pairs = [(dogs[i % 3][: 1 + i % 2], dogs[(i + i % 2) % 3][2:4]) for i in range(6)]
    batcher = app.pair_model.embed_photos
    calls_before, rows_before = batcher.calls, batcher.rows
    alone = [app.compare_sets(a, b) for a, b in pairs]
    calls_alone, rows_alone = batcher.calls - calls_before, batcher.rows - rows_before  # one request at a time
    calls_before, rows_before = batcher.calls, batcher.rows
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda ab: app.compare_sets(*ab), pairs))
        calls_together, rows_together = batcher.calls - calls_before, batcher.rows - rows_before
        identified = list(pool.map(app.identify, [dogs[0][4]] * 3))
    # the right verdicts (even pairs: one dog on both sides), the same alone and together
    assert (
        [t[0].split(":")[0] for t in together] == [t[0].split(":")[0] for t in alone] == ["Same animal", "Different animals"] * 3
    )
    for (_, p_alone, _, table_alone), (_, p_together, _, table_together) in zip(alone, together):
        assert abs(p_alone["same animal"] - p_together["same animal"]) < 1e-4
        assert [row[:4] for row in table_alone] == [row[:4] for row in table_together]
    # the same photos went through the model, in fewer passes than one request at a time needs (12 here, 8 together)
    assert rows_together == rows_alone and calls_together < calls_alone
    assert len({answer for answer, _, _ in identified}) == 1  # the same photo gets the same answer
    assert identified[0][0].startswith("Unknown animal")  # a dog no test registers
    assert parse_settings(["--concurrency", "2", "--max-batch-size", "0"]).max_batch_size == 0
    with pytest.raises(SystemExit):
        parse_settings(["--concurrency", "0"])
