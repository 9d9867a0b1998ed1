"""The JSON REST API (`app/api.py`) through FastAPI's TestClient, on the app's loaded models (issue 18)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi")
from app_server import app_module  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def client():
    app_module().wait_for_text_search()  # loaded in the background after start: the tests below want every model
    return TestClient(app_module().app)


def dog_files(shared_data, dog, n, field):
    folder = shared_data / "dogfacenet" / dog
    return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in sorted(folder.glob("*.jpg"))[:n]]


def test_health_and_openapi_schema(client):
    health = client.get("/api/v1/health").json()
    assert health["models"] == {"pair_matcher": True, "embedder": True, "dual_encoder": True}
    assert health["status"] == "ok" and health["gallery_size"] > 0 and "torch" in health["versions"]
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/match", "/api/v1/identify", "/api/v1/register", "/api/v1/animals", "/api/v1/search", "/api/v1/health"):
        assert path in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_match_two_sets(client, shared_data):
    files = dog_files(shared_data, "0", 3, "set_a") + dog_files(shared_data, "5", 2, "set_b")
    out = client.post("/api/v1/match", files=files)
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["set_sizes"] == [3, 2] and 0.0 <= body["probability"] <= 1.0
    assert body["same_animal"] == (body["probability"] >= body["threshold"])
    assert body["most_alike"] == body["top_pairs"][0] and body["most_alike"]["filename_a"].startswith("0.")


def test_match_bad_input_is_a_clear_json_error(client, shared_data, monkeypatch):
    import app.api as api

    one = dog_files(shared_data, "0", 1, "set_b")
    bad = client.post("/api/v1/match", files=[("set_a", ("scan.jpg", b"not an image", "image/jpeg"))] + one)
    assert bad.status_code == 400 and "'scan.jpg'" in bad.json()["detail"]
    assert "petmatch-api" not in bad.json()["detail"]  # the upload as the user named it, not the server's temp path
    empty = client.post("/api/v1/match", files=[("set_a", ("empty.jpg", b"", "image/jpeg"))] + one)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    many = client.post("/api/v1/match", files=dog_files(shared_data, "0", 1, "set_a") * 21 + one)
    assert many.status_code == 413 and "at most 20" in many.json()["detail"]
    monkeypatch.setattr(api, "MAX_UPLOAD_BYTES", 1000)
    large = client.post("/api/v1/match", files=dog_files(shared_data, "0", 1, "set_a") + one)
    assert large.status_code == 413 and "larger than" in large.json()["detail"]
    missing = client.post("/api/v1/match", files=one)
    assert missing.status_code == 400 and "set_a" in missing.json()["detail"]


def test_register_list_and_identify(client, shared_data):
    out = client.post("/api/v1/register", data={"name": "Api Dog"}, files=dog_files(shared_data, "11", 3, "photos"))
    assert out.status_code == 200, out.text
    assert out.json() == {"name": "Api Dog", "added": 3, "photos": 3}
    animals = client.get("/api/v1/animals").json()
    assert {"name": "Api Dog", "photos": 3} in animals["animals"] and animals["count"] == len(animals["animals"])
    ((field, (name, data, kind)),) = dog_files(shared_data, "11", 4, "photo")[3:]
    found = client.post("/api/v1/identify", files={"photo": (name, data, kind)}).json()
    assert found["decision"] in ("identified", "unknown", "reshoot") and found["message"]
    assert found["candidates"] and found["candidates"][0]["name"] == (found["name"] or found["candidates"][0]["name"])
    assert (
        client.post("/api/v1/register", data={"name": "  "}, files=dog_files(shared_data, "11", 1, "photos")).status_code == 400
    )
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
    from app.api import Services, create_api

    bare = TestClient(
        create_api(
            Services(
                pair_unavailable="no pair matcher at /nowhere",
                gallery_unavailable="no embedder",
                text_unavailable="no dual encoder",
            )
        )
    )
    out = bare.post("/api/v1/match", files=[("set_a", ("a.jpg", b"x", "image/jpeg")), ("set_b", ("b.jpg", b"x", "image/jpeg"))])
    assert out.status_code == 503 and "no pair matcher at /nowhere" in out.json()["detail"]
    assert bare.get("/api/v1/animals").status_code == 503
    assert bare.post("/api/v1/search", json={"text": "a dog"}).status_code == 503
    health = bare.get("/api/v1/health").json()
    assert health["status"] == "degraded" and health["unavailable"]["embedder"] == "no embedder"


def test_a_search_waits_for_the_text_model_loading_in_the_background():
    """The app loads the text model after start (app.loading.BackgroundLoad): an early search waits for the load,
    then answers, or says why it cannot; a loader's exception disables only text search."""
    from app.api import Services, create_api
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
    health = client.get("/api/v1/health").json()
    assert health["status"] == "loading" and "still loading" in health["unavailable"]["dual_encoder"]
    release.set()
    out = client.post("/api/v1/search", json={"text": "a dog"})
    assert out.status_code == 503
    assert "the text-search model could not be loaded: OSError: index file unreadable" in out.json()["detail"]
