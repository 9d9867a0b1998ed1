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

This file holds drills 1-2 and the command line; the app harness is in `bench/drill_app.py`, drills 3-4 in
`bench/drill_kills.py`, drills 5-6 in `bench/drill_inputs.py`.

The apps run with a staff key (issue 33: registering needs one), made afresh for each run and passed to the app
processes in `PETMATCH_API_KEYS`; the drills' registrations send it as `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the kill drill forks workers from this process

ROOT = Path(__file__).resolve().parents[1]

import drill_app  # noqa: E402
import requests  # noqa: E402
from drill_app import App, dog_photos, read  # noqa: E402
from drill_inputs import drill_hostile, drill_model_folders  # noqa: E402
from drill_kills import drill_kill_registration, drill_kill_training  # noqa: E402

# -- staff key ------------------------------------------------------------------------------------------------------
STAFF_KEY = secrets.token_urlsafe(32)
os.environ["PETMATCH_API_KEYS"] = STAFF_KEY  # every app process the drills start inherits it


def _register_as_staff(self: App, name: str, photos: list[tuple[str, bytes]], timeout: float = 300) -> requests.Response:
    files = [("photos", (filename, data, "image/jpeg")) for filename, data in photos]
    headers = {"Authorization": f"Bearer {STAFF_KEY}"}
    return requests.post(f"{self.url}/api/v1/register", data={"name": name}, files=files, headers=headers, timeout=timeout)


drill_app.App.register = _register_as_staff  # type: ignore[method-assign]  # every drill's App registers as staff


# -- concurrency drills --------------------------------------------------------------------------------------
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
