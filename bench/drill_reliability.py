"""Reliability and security drills (issue 15): many users, two app processes, kill -9, hostile uploads, model
folders from strangers. Prints one table (drill, tries, failures, data lost) for bench/README.md.

    python bench/drill_reliability.py --json bench/results/drill_reliability.json

Each drill runs bounded loops against real code and cleans up after itself (everything lives in a temporary
folder; the app processes it starts listen on 127.0.0.1 and are stopped at the end):

1. `concurrent-registrations`: 8 clients register 40 different dogs at once through the REST API, then
   identify each from a photo not registered; the gallery must hold all 40 with all their photos, and again
   after the app is restarted.
2. `two-processes`: a second app process on the same gallery folder; 4 clients register 12 dogs, alternating
   between the two processes; each process must list every dog, including those registered through the other.
3. `kill-9-registration`: a worker process registers dogs in a loop and writes down each registration the
   gallery confirmed; it is killed with SIGKILL (>= 50 times: every other time 0-20 ms into one of its first three
   index saves, otherwise at a random moment of the loop); after each kill the gallery
   is reopened, must load (checksums verified) and must hold every confirmed registration with its photos.
4. `kill-9-training`: a tiny pair-matcher run (`train/run.py`) is killed while it writes a checkpoint (0-300 ms
   after a new checkpoint folder appears), 6 times, and resumed until it finishes; its final weights and threshold
   are compared with an uninterrupted run of the same seed.
5. `hostile-uploads`: a 20,000 x 20,000 PNG (decompression bomb), a 50 MB file, 500 photos in one set, a text
   file named .jpg, an empty set, names with HTML/JavaScript, `../` path parts, 5,000 characters and non-Latin
   letters, a 100,000-character text query. Each must get a clear 4xx message (no traceback), nothing may be
   written outside the gallery folder, and the app must still answer afterwards.
6. `model-folders`: pickle-only weights, a config asking for remote code, a truncated and a header-tampered
   safetensors file: each refused by the app's loader with a clear reason, nothing executed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the kill drill forks workers from this process

import requests  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOGS = ROOT.parent / "shared" / "data" / "dogfacenet"


# -- the app -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """`python app/app.py` on 127.0.0.1 with its own gallery folder; stopped by `stop()`."""

    def __init__(self, gallery_dir: Path, log_dir: Path, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"{name}-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app" / "app.py"), "--port", str(self.port), "--gallery-dir", str(gallery_dir)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
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
    return [(p.name, p.read_bytes()) for p in paths]


# -- drills --------------------------------------------------------------------------------------------------
def drill_concurrent(work: Path, logs: Path) -> dict:
    gallery_dir = work / "gallery-concurrent"
    dogs = dog_photos(40, 3)
    app = App(gallery_dir, logs, "concurrent")
    statuses: list[int] = []
    try:
        before = app.animals()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: app.register(f"drill dog {i}", read(dogs[i][:2])).status_code, range(40)))
            answers = list(pool.map(lambda i: app.identify(dogs[i][2].read_bytes()).json(), range(40)))
        after = app.animals()
    finally:
        app.stop()
    restarted = App(gallery_dir, logs, "concurrent-restart")
    try:
        after_restart = restarted.animals()
    finally:
        restarted.stop()
    expected = {f"drill dog {i}": 2 for i in range(40)}
    lost = sum(after.get(n) != c for n, c in expected.items())
    lost_restart = sum(after_restart.get(n) != c for n, c in expected.items())
    return {
        "drill": "concurrent-registrations",
        "tries": 40,
        "failures": sum(s != 200 for s in statuses),
        "data_lost": max(lost, lost_restart),
        "detail": (
            f"8 clients; {sum(s == 200 for s in statuses)}/40 registered; listed {40 - lost}/40, after restart "
            f"{40 - lost_restart}/40 (+{len(before)} demo dogs); identified from an unregistered photo: "
            f"{sum(a.get('name') == f'drill dog {i}' for i, a in enumerate(answers))}/40"
        ),
    }


def drill_two_processes(work: Path, logs: Path) -> dict:
    gallery_dir = work / "gallery-two"
    dogs = dog_photos(12, 2, skip=40)
    first = App(gallery_dir, logs, "first")
    second = App(gallery_dir, logs, "second")
    try:
        apps = (first, second)
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda i: apps[i % 2].register(f"pair dog {i}", read(dogs[i])).status_code, range(12)))
        seen = [app.animals() for app in apps]
    finally:
        first.stop()
        second.stop()
    expected = {f"pair dog {i}": 2 for i in range(12)}
    lost = max(sum(s.get(n) != c for n, c in expected.items()) for s in seen)
    return {
        "drill": "two-processes",
        "tries": 12,
        "failures": sum(s != 200 for s in statuses),
        "data_lost": lost,
        "detail": f"2 app processes on one gallery folder, 4 clients; each lists {12 - lost}/12 of the dogs registered through either",
    }


def drill_kill_registration(work: Path, rounds: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from model_pkg import ArcFaceEmbedderModel
    from model_pkg.gallery_store import PhotoGallery

    embedder = ArcFaceEmbedderModel.from_pretrained(ROOT / "models" / "arcface-embedder").float().eval()
    gallery_dir, confirmed_file = work / "gallery-kill", work / "confirmed.jsonl"
    dogs = [[str(p) for p in photos] for photos in dog_photos(30, 2, skip=60)]
    PhotoGallery(gallery_dir, embedder)  # identity computed once here, before any fork
    from model_pkg.gallery import GalleryIndex

    rng = random.Random(seed)
    failures = lost = mid_save = 0
    for r in range(rounds):
        saving_r, saving_w = os.pipe()  # the worker says when a save starts, so the kill can land inside it
        pid = os.fork()
        if pid == 0:  # the worker: register until killed, writing down what the gallery confirmed
            try:
                os.close(saving_r)
                save = GalleryIndex.save

                def announced_save(index, directory, _save=save, _fd=saving_w):
                    os.write(_fd, b"s")
                    return _save(index, directory)

                GalleryIndex.save = announced_save  # type: ignore[method-assign]
                gallery = PhotoGallery(gallery_dir, embedder)
                for i in range(10_000):
                    name = f"k{r}-{i}"
                    count = gallery.register(name, dogs[(r + i) % len(dogs)])
                    with open(confirmed_file, "a") as fh:
                        fh.write(json.dumps({"name": name, "photos": count}) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
            finally:
                os._exit(0)
        os.close(saving_w)
        # Every other round a random moment of the registration loop; otherwise 0-20 ms into the 1st-3rd save
        # (writing the faiss index, the vectors, the checksummed metadata, fsyncs, the folder swap).
        if r % 2:
            time.sleep(rng.uniform(0.3, 2.5))
        else:
            for _ in range(rng.randint(1, 3)):
                os.read(saving_r, 1)
            time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(saving_r)
        mid_save += any(gallery_dir.glob(".index.tmp-*"))
        try:
            reopened = PhotoGallery(gallery_dir, embedder)  # the restart: loads and verifies checksums
        except Exception as err:  # a gallery that no longer loads is the worst outcome: count it, go on
            print(f"round {r}: the gallery did not load: {type(err).__name__}: {err}", flush=True)
            failures += 1
            continue
        counts = reopened.photo_counts()
        confirmed = [json.loads(line) for line in confirmed_file.read_text().splitlines()] if confirmed_file.exists() else []
        lost += sum(counts.get(c["name"], 0) < c["photos"] for c in confirmed)
        missing = [m["photo"] for m in reopened.index.metadata if not (gallery_dir / m["photo"]).is_file()]
        failures += bool(missing)
    confirmed = confirmed_file.read_text().splitlines() if confirmed_file.exists() else []
    indexed = {m["photo"] for m in PhotoGallery(gallery_dir, embedder).index.metadata}
    orphans = sum(1 for p in (gallery_dir / "photos").rglob("*.jpg") if str(p.relative_to(gallery_dir)) not in indexed)
    return {
        "drill": "kill-9-registration",
        "tries": rounds,
        "failures": failures,
        "data_lost": lost,
        "detail": (
            f"{len(confirmed)} registrations confirmed across {rounds} kills, {mid_save} kills left an interrupted save "
            f"behind; {orphans} photo files of unconfirmed registrations remain unindexed (not data loss)"
        ),
    }


def _train(out: Path, logs: Path, kill_during_checkpoint: random.Random | None = None) -> int | None:
    """`train/run.py` on a tiny pair-matcher config. With `kill_during_checkpoint`, it is killed with SIGKILL a
    random 0-300 ms after a new checkpoint folder appears (HF Trainer writes trainer_state.json last); -> the exit
    code, or None when killed."""
    dogs = out.parent / "dogs"
    if not dogs.exists():
        for dog in sorted(os.listdir(DOGS), key=int)[:12]:
            shutil.copytree(DOGS / dog, dogs / dog)
    model = json.dumps({"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "hidden_size": 32})
    sets = [f"data_dir={dogs}", f"output_dir={out}", "splits_file=null", f"model={model}", "frozen_steps=20"]
    sets += ["finetune_steps=40", "eval_steps=4", "val_pairs=12", "batch_size=4", "logging_steps=4", "save_total_limit=3"]
    cmd = [
        sys.executable,
        str(ROOT / "train" / "run.py"),
        "--task",
        "pair",
        "--config",
        str(ROOT / "train/configs/pair_matcher.yaml"),
    ]
    for s in sets:
        cmd += ["--set", s]
    with open(logs / f"train-{out.name}.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if kill_during_checkpoint is None:
            return proc.wait()
        checkpoints = out / "checkpoints"
        seen = {p.name for p in checkpoints.glob("checkpoint-*")} if checkpoints.exists() else set()
        while proc.poll() is None:
            new = [p for p in checkpoints.glob("checkpoint-*") if p.name not in seen] if checkpoints.exists() else []
            if new:
                time.sleep(kill_during_checkpoint.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.01)
        return proc.returncode


def drill_kill_training(work: Path, logs: Path, seed: int) -> dict:
    from safetensors.torch import load_file

    reference, killed = work / "train-reference", work / "train-killed"
    _train(reference, logs)
    rng = random.Random(seed)
    kills = attempts = 0
    while not (killed / "summary.json").exists() and attempts < 12:
        attempts += 1
        if _train(killed, logs, kill_during_checkpoint=rng if attempts <= 6 else None) is None:
            kills += 1
    a, b = load_file(reference / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    thr_a = json.loads((reference / "model" / "config.json").read_text())["threshold"]
    thr_b = json.loads((killed / "model" / "config.json").read_text())["threshold"]
    same = diff <= 1e-4 and abs(thr_a - thr_b) <= 1e-4
    return {
        "drill": "kill-9-training",
        "tries": kills,
        "failures": int(not (killed / "summary.json").exists()),
        "data_lost": 0 if same else 1,
        "detail": (
            f"{kills} kills, finished after {attempts} starts; largest weight difference to the uninterrupted run "
            f"{diff:.2e}, thresholds {thr_a:.4f} / {thr_b:.4f} (tolerance 1e-4)"
        ),
    }


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


DRILLS = (
    "model-folders",
    "hostile-uploads",
    "concurrent-registrations",
    "two-processes",
    "kill-9-registration",
    "kill-9-training",
)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drills", default=",".join(DRILLS))
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of the registering worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, galleries)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="petmatch-drill-")) / "work"
    logs = work.parent / "logs"
    work.mkdir()
    logs.mkdir()
    rows = []
    try:
        for drill in args.drills.split(","):
            start = time.perf_counter()
            print(f"== {drill}", flush=True)
            if drill == "concurrent-registrations":
                row = drill_concurrent(work, logs)
            elif drill == "two-processes":
                row = drill_two_processes(work, logs)
            elif drill == "kill-9-registration":
                row = drill_kill_registration(work, args.kills, args.seed)
            elif drill == "kill-9-training":
                row = drill_kill_training(work, logs, args.seed)
            elif drill == "hostile-uploads":
                row = drill_hostile(work, logs)
            elif drill == "model-folders":
                row = drill_model_folders(work)
            else:
                raise SystemExit(f"unknown drill {drill!r}; choose from {DRILLS}")
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"   {row['failures']} failures, {row['data_lost']} lost: {row['detail']} ({row['seconds']} s)", flush=True)
    finally:
        if args.keep:
            print(f"kept {work.parent}")
        else:
            shutil.rmtree(work.parent, ignore_errors=True)
    print("\n| drill | tries | failures | data lost | what was checked |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['drill']} | {r['tries']} | {r['failures']} | {r['data_lost']} | {r['detail']} |")
    if args.json:
        from model_pkg.fileio import atomic_write_json

        atomic_write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
