"""The Gradio app builds, and its set-vs-set function answers on real photos."""

from __future__ import annotations

import os

import pytest

gr = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def app(shared_data):
    import importlib

    return importlib.import_module("app.app")


def photos(shared_data, dog):
    folder = shared_data / "dogfacenet" / dog
    return [str(folder / f) for f in sorted(os.listdir(folder))]


def test_demo_builds_with_named_api(app):
    assert isinstance(app.demo, gr.Blocks)
    assert "compare_sets" in [d.get("api_name") for d in app.demo.config["dependencies"]]


def test_same_and_different_dogs(app, shared_data):
    dog0, dog5 = photos(shared_data, "0"), photos(shared_data, "5")
    same_text, same = app.compare_sets(dog0[:2], dog0[2:4])
    diff_text, diff = app.compare_sets(dog0[:2], dog5[:2])
    assert same_text.startswith("Same animal") and same["same animal"] > 0.9
    assert diff_text.startswith("Different animals") and diff["same animal"] < 0.1


def test_bad_uploads_get_friendly_errors(app, shared_data, tmp_path):
    dog0 = photos(shared_data, "0")
    with pytest.raises(gr.Error, match="first set is empty"):
        app.compare_sets([], dog0[:1])
    with pytest.raises(gr.Error, match="at most 20"):
        app.compare_sets(dog0[:1], dog0[:1] * 21)
    bad = tmp_path / "note.jpg"
    bad.write_text("not a photo")
    with pytest.raises(gr.Error, match="note.jpg"):
        app.compare_sets([str(bad)], dog0[:1])


def test_space_front_matter():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "spaces", "README.md")).read()
    front = text.split("---")[1]
    for line in ("sdk: gradio", "sdk_version: 6.31.0", "app_file: app/app.py", 'python_version: "3.11"'):
        assert line in front
    assert os.path.isfile(os.path.join(root, front.split("app_file:")[1].split()[0]))
