"""One petmatch app per test session, shared by tests/app/ (test_app*.py, test_space.py, test_security.py and test_browser*.py).

`app_env()` prepares, once, a temporary folder holding a copy of the shipped demo assets (`app/assets`: the demo
photos, the demo gallery, the text index and its photos) and an empty writable user gallery, and points the app at
the shipped models (`models/pair-matcher`, `models/arcface-embedder`, `models/dual-encoder`) and at a data folder that
does not exist: the app answers as it does on a plain clone, with the shipped thresholds, and never reads
`../shared`. The shipped demo gallery and text index were made by the shipped models, so nothing is rebuilt at start.
`app_module()` imports `app.main` under that environment (models load once) with one staff key (`STAFF_KEY`);
`app_url()` serves it as production does, uvicorn + the mounted app (`app.main:app`: REST API, staff page at /staff/,
visitors' page at /), on 127.0.0.1 in this process, for `gradio_client` and the browser; `demo_url()` serves the same
models as the app without staff keys (public demo mode).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "models"
STAFF_KEY = "test-staff-key-0123456789abcdef"


@functools.cache
def app_env() -> dict[str, str]:
    root = Path(tempfile.mkdtemp(prefix="petmatch-app-test-"))
    atexit.register(shutil.rmtree, root, True)
    # a copy, so that the app's writes (a demo gallery or text index rebuilt for another model) never touch the
    # checkout; copies, not symlinks: gradio serves a file only from an allowed folder, and it resolves links
    shutil.copytree(REPO_ROOT / "app" / "assets", root / "assets")
    return {
        "PETMATCH_PAIR_MODEL": str(MODELS / "pair-matcher"),
        "PETMATCH_EMBEDDER_MODEL": str(MODELS / "arcface-embedder"),
        "PETMATCH_DUAL_MODEL": str(MODELS / "dual-encoder"),
        "PETMATCH_GALLERY_DIR": str(root / "user-gallery"),
        "PETMATCH_ASSETS_DIR": str(root / "assets"),
        "PETMATCH_DATA": str(root / "no-shared-data"),  # as on a clone without ../shared
        "PETMATCH_API_KEYS": STAFF_KEY,
    }


@functools.cache
def app_module():
    """`app.main`, imported once under `app_env()` (the environment is restored afterwards)."""
    saved = {key: os.environ.get(key) for key in app_env()}
    os.environ.update(app_env())
    try:
        return importlib.import_module("app.main")
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
    """Serve an ASGI app with uvicorn on 127.0.0.1 (a free port) in a thread, as `python app/main.py` does; stopped
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
    """The production app (`app.main:app`, with the staff key) served by uvicorn."""
    return serve(app_module().app)


@functools.cache
def demo_app():
    """The same models as `app_module()`, as the app runs without staff keys (public demo mode)."""
    from app.security import StaffKeys

    return app_module().create_app(StaffKeys())


@functools.cache
def demo_url() -> str:
    return serve(demo_app()[0])
