"""Load test of the Gradio app's set-vs-set API: concurrent clients on 127.0.0.1, no errors, bounded memory.

    python bench/bench_app_load.py --clients 8 --queries 25 --json bench/results/app_load.json

Starts `python app/main.py` on a free loopback port (its own temporary gallery folder; extra app flags after
`--app-args`), waits until it answers, warms it up with 2 queries, waits until every model has loaded (the
text-search model loads in the background after start: `/api/v1/health`), then runs `--clients` threads, each with
its own `gradio_client.Client`, sending `--queries` `/compare_sets` calls of 1-3 demo photos per side (half
the pairs the same dog; photos from app/assets/demo_photos, seeded). Reports the latency distribution seen by
the clients, the throughput, the time from launch to the first answer, the CPU time per call of the app and
of the clients, and the app's resident memory (RSS, app process and children, sampled every
0.2 s): after warm-up, peak, and at the end. Exits 1 when any call fails, RSS grows more than
`--max-rss-growth-mb` over its after-warm-up value, or the latency misses `--max-p50-s` / `--max-p99-s` (when given).
`--app` starts another checkout's app (the same demo photos and client), for before/after comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil

from model_pkg.fileio import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


DEMO = ROOT / "app" / "assets" / "demo_photos"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(process: psutil.Process) -> float:
    procs = [process] + process.children(recursive=True)
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds (user + system) used so far by `process` and its children."""
    total = 0.0
    for p in [process] + process.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def dog_photos() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for folder in ("gallery", "queries", "unknown", "new"):
        for dog in sorted(os.listdir(DEMO / folder)) if (DEMO / folder).is_dir() else []:
            out.setdefault(dog, []).extend(str(p) for p in sorted((DEMO / folder / dog).glob("*.jpg")))
    return {dog: files for dog, files in out.items() if len(files) >= 2}


def queries(seed: int, n: int, photos: dict[str, list[str]]) -> list[tuple[list[str], list[str]]]:
    """`n` (set A, set B) pairs of 1-3 photos each; even ones the same dog (disjoint photos), odd ones two dogs."""
    rng = random.Random(seed)
    dogs = sorted(photos)
    out = []
    for i in range(n):
        if i % 2 == 0:
            dog = rng.choice(dogs)
            files = rng.sample(photos[dog], len(photos[dog]))
            cut = max(1, min(3, len(files) // 2))
            out.append((files[:cut], files[cut : cut + rng.randint(1, min(3, len(files) - cut))]))
        else:
            a, b = rng.sample(dogs, 2)
            out.append(
                (
                    rng.sample(photos[a], rng.randint(1, min(3, len(photos[a])))),
                    rng.sample(photos[b], rng.randint(1, min(3, len(photos[b])))),
                )
            )
    return out


def wait_until_up(url: str, process: subprocess.Popen, timeout: float, poll_s: float = 1.0) -> float:
    """Seconds until `url` answers HTTP 200 (polled every `poll_s`); raises if the app exits or times out."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(poll_s)
    raise TimeoutError(f"the app did not answer on {url} within {timeout:.0f} s")


def wait_until_loaded(url: str, timeout: float, poll_s: float = 0.2) -> float:
    """Seconds until `/api/v1/health` no longer says "loading" (the text-search model loads in the background after
    start): the memory baseline is taken after it, so the model's own footprint is not counted as growth under load.
    An app without that endpoint (an older checkout) counts as loaded at once."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/api/v1/health", timeout=5) as response:
                if json.load(response).get("status") != "loading":
                    return time.perf_counter() - start
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"the app's models were still loading after {timeout:.0f} s")


def stop_app(process: subprocess.Popen) -> None:
    """Terminate the app; kill it if it has not exited within 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--queries", type=int, default=25, help="calls per client")
    parser.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=300.0,
        help="fail when the app's RSS grows more than this over its after-warm-up value",
    )
    parser.add_argument("--max-p50-s", type=float, help="also fail when the median latency is above this")
    parser.add_argument("--max-p99-s", type=float, help="also fail when the 99th percentile latency is above this")
    parser.add_argument("--app", default=str(ROOT / "app" / "main.py"), help="the app to start (e.g. an older checkout's)")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. which commit or setting)")
    parser.add_argument(
        "--ssl-verify",
        action="store_true",
        help="gradio_client's default, used by the issue-5 runs: every HTTP request it makes (upload, queue, result "
        "stream, downloads) builds a new TLS context with the CA bundle, ~20-50 ms of CPU each, even for this "
        "plain-http loopback URL; off by default so the clients, on the same cores as the app, cost less",
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--app-args", nargs=argparse.REMAINDER, default=[], help="extra flags for app/main.py")
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    photos = dog_photos()
    if len(photos) < 2:
        raise SystemExit(f"need the demo photos in {DEMO} (python app/build_demo_assets.py copies them)")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="petmatch-load-") as gallery_dir:
        command = [
            sys.executable,
            args.app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--gallery-dir",
            gallery_dir,
            *args.app_args,
        ]
        launched = time.perf_counter()
        # the `app` and `model_pkg` of the app file's checkout (e.g. an older one), not the installed ones
        env = {**os.environ, "PYTHONPATH": str(Path(args.app).resolve().parents[1])}
        app = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            start_s = wait_until_up(url, app, args.start_timeout, poll_s=0.2)
            process = psutil.Process(app.pid)
            warm = Client(url, verbose=False, ssl_verify=args.ssl_verify)
            for i, (a, b) in enumerate(queries(args.seed + 10_000, 2, photos)):
                warm.predict([handle_file(p) for p in a], [handle_file(p) for p in b], api_name="/compare_sets")
                if i == 0:
                    first_answer_s = time.perf_counter() - launched
            wait_until_loaded(url, args.start_timeout)
            loaded_s = time.perf_counter() - launched
            rss_warm = rss_mb(process)
            cpu_app_start, cpu_clients_start = cpu_s(process), cpu_s(psutil.Process())
            samples, stop = [rss_warm], threading.Event()

            def sample():
                while not stop.wait(0.2):
                    samples.append(rss_mb(process))

            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()

            def client(index: int):
                c = Client(url, verbose=False, ssl_verify=args.ssl_verify)
                for a, b in queries(args.seed + index, args.queries, photos):
                    t = time.perf_counter()
                    try:
                        text, *_ = c.predict([handle_file(p) for p in a], [handle_file(p) for p in b], api_name="/compare_sets")
                        ok = text.startswith(("Same animal", "Different animals"))
                    except Exception as err:  # every failure is counted and reported
                        ok, text = False, f"{type(err).__name__}: {err}"
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        if not ok:
                            errors.append(text)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            stop.set()
            sampler.join()
            rss_end = rss_mb(process)
            cpu_app, cpu_clients = cpu_s(process) - cpu_app_start, cpu_s(psutil.Process()) - cpu_clients_start
        finally:
            stop_app(app)
    lat = np.array(latencies) * 1000
    growth = rss_end - rss_warm
    result = {
        "clients": args.clients,
        "queries_per_client": args.queries,
        "calls": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:5],
        "photos_per_side": "1-3",
        "label": args.label,
        "app_args": args.app_args,
        "client_ssl_verify": args.ssl_verify,
        "app_start_s": round(start_s, 1),
        "first_answer_s": round(first_answer_s, 1),
        "all_models_loaded_s": round(loaded_s, 1),
        "wall_s": round(wall, 1),
        "throughput_calls_per_s": round(len(latencies) / wall, 2),
        "latency_ms": {
            k: round(float(v), 1)
            for k, v in (
                ("mean", lat.mean()),
                ("p50", np.percentile(lat, 50)),
                ("p90", np.percentile(lat, 90)),
                ("p99", np.percentile(lat, 99)),
                ("min", lat.min()),
                ("max", lat.max()),
            )
        },
        # where the machine's CPU went, per call: the app (HTTP, queue, decoding, models) and the 8 clients (this process)
        "cpu_ms_per_call": {
            "app": round(1000 * cpu_app / len(latencies), 1),
            "clients": round(1000 * cpu_clients / len(latencies), 1),
        },
        "rss_mb": {
            "after_warmup": round(rss_warm, 1),
            "peak": round(max(samples), 1),
            "end": round(rss_end, 1),
            "growth": round(growth, 1),
            "bound": args.max_rss_growth_mb,
        },
        "latency_goal_s": {"p50": args.max_p50_s, "p99": args.max_p99_s},
        "passed": bool(
            not errors
            and growth <= args.max_rss_growth_mb
            and (args.max_p50_s is None or np.percentile(lat, 50) <= 1000 * args.max_p50_s)
            and (args.max_p99_s is None or np.percentile(lat, 99) <= 1000 * args.max_p99_s)
        ),
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(result, args.json)
    if not result["passed"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
