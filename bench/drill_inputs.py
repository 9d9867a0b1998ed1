"""The hostile-input drills of drill_reliability.py: `hostile-uploads` and `model-folders`.

Uploads crafted to hurt the app (decompression bomb, huge files, odd names, long queries) must each get a
clear 4xx answer with nothing written outside the gallery; model folders from strangers (pickle weights,
remote code, tampered safetensors) must be refused by the app's loader before anything runs. Separate from
the concurrency and kill drills because they test what the app accepts, not what it keeps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import requests
from drill_app import DOGS, ROOT, App


def _portable(text: str, work: Path) -> str:
    """A message as recorded in the results: the drill's temporary folder named `<drill>`, not this machine's path."""
    return text.replace(str(work), "<drill>").replace(str(work.parent), "<drill>")


def _bomb_png(path: Path) -> None:
    from PIL import Image

    if not path.exists():
        Image.new("L", (20_000, 20_000)).save(path)


def drill_hostile(work: Path, logs: Path) -> dict:
    gallery_dir = work / "gallery-hostile"
    bomb = work / "bomb.png"
    _bomb_png(bomb)
    photo = sorted((DOGS / "1").iterdir())[0].read_bytes()
    app = App(gallery_dir, logs, "hostile")
    outside_before = {p for p in work.parent.rglob("*") if gallery_dir not in p.parents}
    cases = []

    def case(name: str, call, expect: tuple[int, ...], must_say: str = "") -> None:
        start = time.perf_counter()
        try:
            r = call()
            body, status = r.text, r.status_code
        except requests.RequestException as err:
            body, status = f"{type(err).__name__}: {err}", 0
        ok = status in expect and "Traceback" not in body and must_say.lower() in body.lower() and app.alive()
        cases.append(
            {
                "case": name,
                "status": status,
                "ok": ok,
                "seconds": round(time.perf_counter() - start, 2),
                "answer": _portable(body[:200], work),
            }
        )

    try:
        url = app.url + "/api/v1"
        case("decompression bomb 20000x20000 PNG", lambda: app.identify(bomb.read_bytes()), (400,), "safety limit")
        case("50 MB file", lambda: app.identify(os.urandom(50 * 1024 * 1024)), (413,), "larger than")
        case("500 photos in one set", lambda: app.register("many", [(f"{i}.jpg", photo) for i in range(500)]), (413,), "at most")
        case("text file named .jpg", lambda: app.identify(b"just some text, not a photo"), (400,), "not an image")
        case(
            "empty set",
            lambda: requests.post(f"{url}/match", files=[("set_b", ("a.jpg", photo, "image/jpeg"))], timeout=60),
            (400, 422),
            "set_a",
        )
        html_name = "<img src=x onerror=alert(1)>"
        case("HTML/JavaScript name", lambda: app.register(html_name, [("a.jpg", photo)]), (200,))
        case("name with ../ path parts", lambda: app.register("../../../etc/evil", [("a.jpg", photo)]), (200,))
        case("5,000-character name", lambda: app.register("x" * 5000, [("a.jpg", photo)]), (400,), "at most")
        case("non-Latin name", lambda: app.register("Шарик 太郎 🐕", [("a.jpg", photo)]), (200,))
        case(
            "100,000-character query",
            lambda: requests.post(f"{url}/search", json={"text": "dog " * 25_000}, timeout=60),
            (400, 422),
            "1000",
        )
        animals = app.animals()
        literal = html_name in animals and "Шарик 太郎 🐕" in animals and "../../../etc/evil" in animals
        cases.append({"case": "names stored and returned as typed", "status": 200, "ok": literal, "seconds": 0, "answer": ""})
    finally:
        app.stop()
    outside_after = {p for p in work.parent.rglob("*") if gallery_dir not in p.parents}
    written_outside = sorted(str(p) for p in outside_after - outside_before if "app-" not in p.name and p.suffix != ".log")
    for c in cases:
        print(f"  {c['case']:40s} {c['status']:4d} {'ok' if c['ok'] else 'FAILED':6s} {c['seconds']:6.2f}s {c['answer'][:90]!r}")
    return {
        "drill": "hostile-uploads",
        "tries": len(cases),
        "failures": sum(not c["ok"] for c in cases) + len(written_outside),
        "data_lost": 0,
        "detail": f"clear 4xx messages, app answering after each; files written outside the gallery: {len(written_outside)}",
        "cases": cases,
    }


def drill_model_folders(work: Path) -> dict:
    import torch

    from app.loading import load_embedder

    good = ROOT / "models" / "arcface-embedder"
    folders = {}
    pickled = work / "stranger-pickle"
    pickled.mkdir()
    shutil.copy(good / "config.json", pickled)
    torch.save({"weights": torch.zeros(1)}, pickled / "pytorch_model.bin")
    folders["pickle weights only"] = (pickled, "pickle")
    remote = work / "stranger-remote-code"
    shutil.copytree(good, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    folders["config with auto_map (remote code)"] = (remote, "never executes code")
    for name, cut in (("truncated safetensors", lambda b: b[: len(b) // 3]), ("tampered header", lambda b: b"\xff" * 8 + b[8:])):
        folder = work / f"stranger-{name.split()[0]}"
        shutil.copytree(good, folder)
        (folder / "model.safetensors").write_bytes(cut((folder / "model.safetensors").read_bytes()))
        folders[name] = (folder, "tampered")
    cases = []
    for name, (folder, must_say) in folders.items():
        model, why = load_embedder(str(folder))
        ok = model is None and must_say in (why or "")
        cases.append({"case": name, "ok": ok, "answer": _portable(str(why), work)})
        print(f"  {name:40s} {'ok' if ok else 'FAILED':6s} {str(why)[:110]!r}")
    return {
        "drill": "model-folders",
        "tries": len(cases),
        "failures": sum(not c["ok"] for c in cases),
        "data_lost": 0,
        "detail": "each refused with its reason before any weight or code was loaded",
        "cases": cases,
    }
