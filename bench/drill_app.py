"""The app under drill for drill_reliability.py: a real `python app/main.py` process and the dog photos sent to it.

:class:`App` starts the app on 127.0.0.1 with its own gallery folder and talks to its REST API;
:func:`dog_photos` picks real test dogs from the shared DogFaceNet data. Separate from the drills because
every drill family (concurrency, kills, hostile inputs) drives the same app and the same photos.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
DOGS = ROOT.parent / "shared" / "data" / "dogfacenet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """`python app/main.py` on 127.0.0.1 with its own gallery folder; stopped by `stop()`."""

    def __init__(self, gallery_dir: Path, log_dir: Path, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"{name}-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app" / "main.py"), "--port", str(self.port), "--gallery-dir", str(gallery_dir)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)},  # this copy's code, not the installed one
        )
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if requests.get(f"{self.url}/api/v1/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"the app did not answer within 300 s; see {self.log.name}")

    def alive(self) -> bool:
        try:
            return requests.get(f"{self.url}/api/v1/health", timeout=30).ok
        except requests.RequestException:
            return False

    def animals(self) -> dict[str, int]:
        listing = requests.get(f"{self.url}/api/v1/animals", timeout=60).json()
        return {a["name"]: a["photos"] for a in listing["animals"]}

    def register(self, name: str, photos: list[tuple[str, bytes]], timeout: float = 300) -> requests.Response:
        files = [("photos", (filename, data, "image/jpeg")) for filename, data in photos]
        return requests.post(f"{self.url}/api/v1/register", data={"name": name}, files=files, timeout=timeout)

    def identify(self, photo: bytes) -> requests.Response:
        return requests.post(f"{self.url}/api/v1/identify", files={"photo": ("q.jpg", photo, "image/jpeg")}, timeout=300)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def dog_photos(count: int, per_dog: int, skip: int = 0) -> list[list[Path]]:
    """`count` real test dogs with at least `per_dog` photos each (the last dogs of the data, never the demo's)."""
    dogs = sorted((d for d in os.listdir(DOGS) if d.isdigit()), key=int, reverse=True)
    out = []
    for dog in dogs:
        photos = sorted((DOGS / dog).iterdir())
        if len(photos) >= per_dog:
            out.append(photos[:per_dog])
    return out[skip : skip + count]


def read(paths) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each photo, as the register endpoint takes them."""
    return [(p.name, p.read_bytes()) for p in paths]
