"""The JSON REST API (`app/api.py`) on the production server (uvicorn + the mounted app, `app_server.app_url`),
on the app's loaded models (issue 18; staff keys: issue 33). Apps built for one test go through FastAPI's TestClient."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from tests.app_server import STAFF_KEY, app_module, app_url  # noqa: E402

STAFF = {"Authorization": f"Bearer {STAFF_KEY}"}


@pytest.fixture(scope="module")
def client():
    app_module().wait_for_text_search()  # loaded in the background after start: the tests below want every model
    with httpx.Client(base_url=app_url(), timeout=300) as http:
        yield http


def dog_files(dog_faces, dog, n, field):
    folder = dog_faces / dog  # tests/photos/dog_faces: test-split dogs, never trained on
    return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in sorted(folder.glob("*.jpg"))[:n]]


def test_health_and_openapi_schema(client):
    assert client.get("/api/v1/health").json() == {"status": "ok"}  # what a load balancer needs, no versions or paths
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/match", "/api/v1/identify", "/api/v1/register", "/api/v1/animals", "/api/v1/search", "/api/v1/health"):
        assert path in schema["paths"]
    for path in ("/api/v1/animals/{animal_id}", "/api/v1/animals/{animal_id}/photos", "/api/v1/audit"):
        assert path in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_match_two_sets(client, dog_faces):
    files = dog_files(dog_faces, "327", 3, "set_a") + dog_files(dog_faces, "335", 2, "set_b")
    out = client.post("/api/v1/match", files=files)
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["set_sizes"] == [3, 2] and body["kind"] == "dog_face"
    # two dogs: the shipped pair matcher, at its stored threshold, says different
    assert body["same_animal"] is False and body["probability"] < 0.1 < body["threshold"]
    assert body["most_alike"] == body["top_pairs"][0] and body["most_alike"]["filename_a"].startswith("327.")
    same = client.post(
        "/api/v1/match", files=dog_files(dog_faces, "327", 2, "set_a") + dog_files(dog_faces, "327", 4, "set_b")[2:]
    )
    body = same.json()  # the same dog's other photos: same
    assert body["same_animal"] is True and body["probability"] > 0.9 and body["probability"] >= body["threshold"]


def test_match_says_what_the_intake_saw_and_never_matches_a_dog_to_a_cat(client):
    from pathlib import Path

    photos = Path(__file__).parents[1] / "photos"

    def files(folder, field, n):
        return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in sorted((photos / folder).glob("*/*.jpg"))[:n]]

    body = client.post("/api/v1/match", files=files("whole_dogs", "set_a", 2) + files("cat_photos", "set_b", 2)).json()
    assert body["probability"] == 0.0 and body["same_animal"] is False and body["kind"] is None
    assert any("never the same animal" in note for note in body["notes"])
    assert [v["species"] for v in body["intake_a"]] == ["dog", "dog"] and [v["species"] for v in body["intake_b"]] == [
        "cat",
        "cat",
    ]
    cats = sorted((photos / "cat_faces" / "birba").glob("*.jpg"))
    same = [("set_a", (p.name, p.read_bytes(), "image/jpeg")) for p in cats[:2]] + [
        ("set_b", (cats[2].name, cats[2].read_bytes(), "image/jpeg"))
    ]
    body = client.post("/api/v1/match", files=same).json()
    assert body["kind"] == "cat_face" and body["same_animal"] is True and body["threshold"] == 0.5
    assert all(v["reshoot"] is None and len(v["box"]) == 4 for v in body["intake_a"] + body["intake_b"])


def test_match_bad_input_is_a_clear_json_error(client, dog_faces, monkeypatch):
    import app.api_common as api_common

    one = dog_files(dog_faces, "327", 1, "set_b")
    bad = client.post("/api/v1/match", files=[("set_a", ("scan.jpg", b"not an image", "image/jpeg"))] + one)
    assert bad.status_code == 400 and "'scan.jpg'" in bad.json()["detail"]
    assert "petmatch-api" not in bad.json()["detail"]  # the upload as the user named it, not the server's temp path
    cut = dog_files(dog_faces, "327", 1, "set_a")[0][1]
    cut = client.post("/api/v1/match", files=[("set_a", ("cut.jpg", cut[1][:2000], "image/jpeg"))] + one)
    assert cut.status_code == 400 and "'cut.jpg'" in cut.json()["detail"] and "/" not in cut.json()["detail"].split(":")[0]
    empty = client.post("/api/v1/match", files=[("set_a", ("empty.jpg", b"", "image/jpeg"))] + one)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    many = client.post("/api/v1/match", files=dog_files(dog_faces, "327", 1, "set_a") * 21 + one)
    assert many.status_code == 413 and "at most 20" in many.json()["detail"]
    monkeypatch.setattr(api_common, "MAX_UPLOAD_BYTES", 1000)  # the server runs in this process
    large = client.post("/api/v1/match", files=dog_files(dog_faces, "327", 1, "set_a") + one)
    assert large.status_code == 413 and "larger than" in large.json()["detail"]
    missing = client.post("/api/v1/match", files=one)
    assert missing.status_code == 400 and "set_a" in missing.json()["detail"]


def test_register_list_and_identify(client, dog_faces):
    out = client.post("/api/v1/register", data={"name": "Api Dog"}, files=dog_files(dog_faces, "368", 3, "photos"), headers=STAFF)
    assert out.status_code == 200, out.text
    body = out.json()
    assert body == {"id": body["id"], "name": "Api Dog", "added": 3, "photos": 3} and body["id"].startswith("a")
    animals = client.get("/api/v1/animals").json()
    listed = next(a for a in animals["animals"] if a["id"] == body["id"])
    assert listed["name"] == "Api Dog" and listed["photos"] == 3 and animals["count"] == len(animals["animals"])
    ((field, (name, data, kind)),) = dog_files(dog_faces, "368", 4, "photo")[3:]
    found = client.post("/api/v1/identify", files={"photo": (name, data, kind)}).json()
    # its 4th photo, never registered, is identified by name with the shipped embedder and the demo gallery's thresholds
    assert found["decision"] == "identified" and found["name"] == "Api Dog" and found["message"]
    assert found["candidates"][0]["name"] == "Api Dog" and found["matches"][0]["animal_id"] == body["id"]
    best = found["matches"][0]  # its photo comes through the API, by ids, as a JPEG
    photo = client.get(best["photo_url"])
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg" and photo.content[:3] == b"\xff\xd8\xff"
    assert best["photo_url"].startswith(f"/api/v1/animals/{best['animal_id']}/photos/")
    blank = client.post("/api/v1/register", data={"name": "  "}, files=dog_files(dog_faces, "368", 1, "photos"), headers=STAFF)
    assert blank.status_code == 400
    assert client.post("/api/v1/identify", files={"photo": ("x.txt", b"hello", "text/plain")}).status_code == 400


def test_search_and_fetch_photos(client):
    out = client.post("/api/v1/search", json={"text": "a dog running on the grass", "top_k": 3})
    assert out.status_code == 200, out.text
    results = out.json()["results"]
    assert len(results) == 3 and results[0]["score"] >= results[-1]["score"]
    photo = client.get(results[0]["url"])
    assert photo.status_code == 200 and photo.headers["content-type"].startswith("image/")
    assert client.get("/api/v1/photos/999999").status_code == 404
    assert client.get("/api/v1/photos/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)  # ids are numbers, never paths
    assert client.post("/api/v1/search", json={"text": "  "}).status_code == 400
    assert client.post("/api/v1/search", json={"text": "a dog", "top_k": 0}).status_code == 400
    long = client.post("/api/v1/search", json={"text": "dog " * 25_000})  # issue 15: refused, not tokenised
    assert long.status_code == 400 and "1000" in long.json()["detail"]


def test_missing_model_answers_503_with_the_reason():
    """A missing model's endpoints say why (without the server's paths); /health only says 'degraded'."""
    from app.api import create_api
    from app.api_common import Services

    bare = TestClient(
        create_api(
            Services(
                pair_unavailable="no pair matcher at /srv/petmatch/models/pair-matcher",
                gallery_unavailable="no embedder",
                text_unavailable="no dual encoder",
            )
        )
    )
    out = bare.post("/api/v1/match", files=[("set_a", ("a.jpg", b"x", "image/jpeg")), ("set_b", ("b.jpg", b"x", "image/jpeg"))])
    assert out.status_code == 503 and out.json()["detail"] == "Set vs set is unavailable: no pair matcher at pair-matcher"
    assert bare.get("/api/v1/animals").status_code == 503
    assert bare.post("/api/v1/search", json={"text": "a dog"}).status_code == 503
    assert bare.get("/api/v1/health").json() == {"status": "degraded"}


def test_a_search_waits_for_the_text_model_loading_in_the_background():
    """The app loads the text model after start (app.loading.BackgroundLoad): an early search waits for the load,
    then answers, or says why it cannot; a loader's exception disables only text search."""
    from app.api import create_api
    from app.api_common import Services
    from app.loading import BackgroundLoad

    services = Services(text_unavailable="the text-search model is still loading", text_loaded=threading.Event())
    release = threading.Event()

    def load():
        release.wait(10)
        raise OSError("index file unreadable")

    def loaded(text, why):
        services.text, services.text_unavailable = text, why

    client = TestClient(create_api(services))
    BackgroundLoad("the text-search model", load, loaded, services.text_loaded).start()
    assert client.get("/api/v1/health").json() == {"status": "loading"}
    release.set()
    out = client.post("/api/v1/search", json={"text": "a dog"})
    assert out.status_code == 503
    assert "the text-search model could not be loaded: OSError: index file unreadable" in out.json()["detail"]
