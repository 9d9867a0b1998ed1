"""The production app (uvicorn + the mounted pages, 127.0.0.1), called through its API with `gradio_client` as a
person's script would: visitors on /, staff on /staff/ with a key as the password (issue 33)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from tests.app_server import STAFF_KEY, app_module, app_url  # noqa: E402


@pytest.fixture(scope="module")
def client():
    return Client(app_url(), verbose=False)


@pytest.fixture(scope="module")
def staff():
    return Client(app_url() + "/staff/", auth=("staff", STAFF_KEY), verbose=False)


def photos(dog_faces, dog):
    folder = dog_faces / dog  # tests/photos/dog_faces: test-split dogs, never trained on
    return [handle_file(str(folder / f)) for f in sorted(os.listdir(folder))]


def test_compare_sets(client, dog_faces):
    dog0, dog5 = photos(dog_faces, "327"), photos(dog_faces, "335")
    text, probability, best, table = client.predict(dog0[:3], dog0[3:5], api_name="/compare_sets")
    assert text.startswith("Same animal") and probability["label"] == "same animal"
    assert probability["confidences"][0]["confidence"] > 0.9
    # every photo as the intake saw it (images the app encodes, downloaded), the most alike pair first
    assert len(best) == 5 and all(os.path.isfile(item["image"]) for item in best)
    assert best[0]["caption"].startswith("first set") and best[1]["caption"].startswith("second set")
    assert len(table["data"]) == 5
    text, probability, _, _ = client.predict(dog0[:1], dog5[:1], api_name="/compare_sets")
    assert text.startswith("Different animals") and probability["label"] == "different animals"


def test_register_identify_and_reject(client, staff, dog_faces):
    """Staff register on /staff/; a visitor on / identifies the animal from another photo."""
    luna = photos(dog_faces, "410")
    status, listing = staff.predict("Luna II", luna[:3], api_name="/register")
    assert "Registered 3 photo(s) of Luna II" in status and "Luna II (3)" in listing
    answer, matches, details = client.predict(luna[3], api_name="/identify")
    assert answer.startswith("Identified: Luna II") and details["label"] == "Luna II"
    assert matches[0]["caption"].startswith("Luna II: similarity") and os.path.isfile(matches[0]["image"])
    answer, _, details = client.predict(photos(dog_faces, "517")[0], api_name="/identify")
    assert answer.startswith("Unknown animal - reshoot") and details["label"] is None


def test_demo_dog_identified_on_first_start(client):
    demo = os.path.join(app_module().SETTINGS.assets_dir, "demo_photos", "queries")
    dog = sorted((d for d in os.listdir(demo) if d.isdigit()), key=int)[0]
    name = app_module().gallery.index.labels[[m.get("dog") for m in app_module().gallery.index.metadata].index(dog)]
    photo = os.path.join(demo, dog, sorted(os.listdir(os.path.join(demo, dog)))[0])
    answer, _, _ = client.predict(handle_file(photo), api_name="/identify")
    assert answer.startswith(f"Identified: {name}")


def test_bad_upload_is_a_clear_error(client, tmp_path):
    bad = tmp_path / "scan.jpg"
    bad.write_bytes(b"<html>not a photo</html>")
    with pytest.raises(Exception, match="scan.jpg"):
        client.predict(handle_file(str(bad)), api_name="/identify")


def test_text_query(client):
    # the shipped dual encoder must give a working tab: a skip here hid issue 11 (a dead tab on fresh installs)
    text, why = app_module().wait_for_text_search()
    assert text is not None, why
    results = client.predict("a dog running on the grass", 4, api_name="/search_text")
    assert len(results) == 4 and all(os.path.isfile(item["image"]) for item in results)


def test_clients_at_the_same_time(dog_faces):
    """Four clients call at once (the app answers them together): every call gets its own, right answer."""
    dog0, dog5 = photos(dog_faces, "327"), photos(dog_faces, "335")
    clients = [Client(app_url(), verbose=False) for _ in range(4)]
    jobs = [c.submit(dog0[:2], (dog0 if i % 2 == 0 else dog5)[2:4], api_name="/compare_sets") for i, c in enumerate(clients)]
    verdicts = [job.result(timeout=120)[0] for job in jobs]
    assert [v.split(":")[0] for v in verdicts] == ["Same animal", "Different animals"] * 2
