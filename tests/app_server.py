"""One petmatch app per test session, shared by test_app*.py, test_space.py and test_browser.py.

`app_env()` prepares, once, a temporary folder with a stand-in embedder (an ArcFace embedder built from its
config with the real offline ImageNet EfficientNet-Lite0 backbone; the trained `models/arcface-embedder` may
not be there), a reduced copy of the committed demo photos (6 gallery dogs, 12 unknown ones, so the demo
gallery builds in seconds), a writable user gallery and a small Flickr8k folder (copies of 24 dev images) for the text
index. `app_module()` imports `app.app` under that environment (models load once) with one staff key
(`STAFF_KEY`); `app_url()` serves it as production does, uvicorn + the mounted app (`app.app:app`: REST API,
staff page at /staff/, visitors' page at /), on 127.0.0.1 in this process, for `gradio_client` and the browser;
`demo_url()` serves the same models as the app without staff keys (public demo mode).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEMO_PHOTOS = REPO_ROOT / "app" / "assets" / "demo_photos"
GALLERY_DOGS, UNKNOWN_DOGS, FLICKR_IMAGES = 6, 12, 24
STAFF_KEY = "test-staff-key-0123456789abcdef"


def _reduced_demo_photos(target: Path) -> None:
    manifest = json.loads((DEMO_PHOTOS / "manifest.json").read_text())
    gallery, unknown = manifest["gallery_dogs"][:GALLERY_DOGS], manifest["unknown_dogs"][:UNKNOWN_DOGS]
    for folder, dogs in (("gallery", gallery), ("queries", gallery), ("unknown", unknown), ("new", manifest["new_dogs"])):
        for dog in dogs:
            shutil.copytree(DEMO_PHOTOS / folder / dog, target / folder / dog)
    manifest.update(gallery_dogs=gallery, unknown_dogs=unknown, names={d: manifest["names"][d] for d in gallery})
    (target / "manifest.json").write_text(json.dumps(manifest))


def _small_flickr(target: Path) -> None:
    source = SHARED_DATA / "flickr8k"
    if not (source / "Flickr_8k.devImages.txt").is_file():
        return
    names = (source / "Flickr_8k.devImages.txt").read_text().split()[:FLICKR_IMAGES]
    (target / "images").mkdir(parents=True)
    for name in names:
        # copies, not symlinks: gradio serves a result only from an allowed folder, and it resolves links
        shutil.copyfile(source / "images" / name, target / "images" / name)
    (target / "Flickr_8k.devImages.txt").write_text("\n".join(names) + "\n")


@functools.cache
def app_env() -> dict[str, str]:
    import torch

    from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel

    root = Path(tempfile.mkdtemp(prefix="petmatch-app-test-"))
    atexit.register(shutil.rmtree, root, True)
    torch.manual_seed(0)
    ArcFaceEmbedderModel(ArcFaceEmbedderConfig(num_classes=0)).save_pretrained(root / "embedder")
    _reduced_demo_photos(root / "assets" / "demo_photos")
    _small_flickr(root / "data" / "flickr8k")
    dual = REPO_ROOT / "models" / "dual-encoder"
    return {
        "PETMATCH_PAIR_MODEL": str(REPO_ROOT / "models" / "pair-matcher"),
        "PETMATCH_EMBEDDER_MODEL": str(root / "embedder"),
        "PETMATCH_DUAL_MODEL": str(dual if dual.is_dir() else root / "no-dual-encoder"),
        "PETMATCH_GALLERY_DIR": str(root / "user-gallery"),
        "PETMATCH_ASSETS_DIR": str(root / "assets"),
        "PETMATCH_DATA": str(root / "data"),
        "PETMATCH_API_KEYS": STAFF_KEY,
    }


@functools.cache
def app_module():
    """`app.app`, imported once under `app_env()` (the environment is restored afterwards)."""
    saved = {key: os.environ.get(key) for key in app_env()}
    os.environ.update(app_env())
    try:
        return importlib.import_module("app.app")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(asgi_app) -> str:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (a free port) in a thread, as `python app/app.py` does; stopped
    when the session ends. -> its URL."""
    import logging

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)

    def stop():
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # pytest has closed the streams they write to
            logging.getLogger(name).disabled = True
        server.should_exit = True
        thread.join(10)

    atexit.register(stop)
    return f"http://127.0.0.1:{server.config.port}"


@functools.cache
def app_url() -> str:
    """The production app (`app.app:app`, with the staff key) served by uvicorn."""
    return serve(app_module().app)


@functools.cache
def demo_app():
    """The same models as `app_module()`, as the app runs without staff keys (public demo mode)."""
    from app.security import StaffKeys

    return app_module().create_app(StaffKeys())


@functools.cache
def demo_url() -> str:
    return serve(demo_app()[0])
