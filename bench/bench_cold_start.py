"""Cold start: how long `import model_pkg` takes, and `python app/main.py` from launch to its first answer.

    python bench/bench_cold_start.py --repeats 3 --json bench/results/cold_start.json
    python bench/bench_cold_start.py --repo <another checkout> --json <file>   # e.g. a checkout of an older commit

Each measurement runs in a fresh Python process (`--repeats` times; the median is reported):

* imports: wall time of `import model_pkg`, of `from model_pkg import PairMatcherModel` (the model classes, torch
  and transformers included), of `import torch` for reference, and of `import gradio` plain and as the app does it
  (its component-stub step skipped, `app/gradio_import.py`), timed inside the process with `time.perf_counter()`
  around the import statement;
* loads: the pair matcher, then the embedder, loaded as the app does (`app.loading`), their imports done first;
* app: `python app/main.py` on a free 127.0.0.1 port with a new, empty gallery folder (the demo dogs are
  copied into it at start, as on a first start), timed from launch to (1) the UI answering HTTP 200 and
  (2) the first `/compare_sets` answer (2 demo photos vs 2, through `gradio_client`), that first call's own
  latency, and (3) the first `/search_text` answer, asked right after (the text-search model loads in the
  background once the UI is up, so this says when the third tab is ready).

The file cache is warm (the script does not drop the OS page cache, which needs root and slows everything
else on the machine): the first run after a reboot is slower. Extra app flags go after `--app-args`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_app_load import dog_photos, free_port, stop_app, wait_until_up

from model_pkg.fileio import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


IMPORTS = {
    "import model_pkg": "import model_pkg",
    "from model_pkg import PairMatcherModel": "from model_pkg import PairMatcherModel",
    "import torch": "import torch",
    "import gradio": "import gradio",
    # what app/main.py does (app/gradio_import.py); a checkout without it reports the row as unavailable
    "import gradio, stub step skipped": "from app.gradio_import import skip_stub_regeneration\n"
    "skip_stub_regeneration()\nimport gradio",
}


# the app's two dog models, loaded as app/main.py does, after their imports (not timed): the second one builds the
# same backbone as the first (the shape-probe reuse of model_pkg.backbones)
_LOAD_SETUP = (
    "from app.loading import load_embedder, load_pair_model\nimport model_pkg.arcface, model_pkg.pair_matcher, onnxruntime"
)
LOADS = {
    "load the pair matcher": (_LOAD_SETUP, "load_pair_model('models/pair-matcher')"),
    "then load the embedder": (
        f"{_LOAD_SETUP}\nload_pair_model('models/pair-matcher')",
        "load_embedder('models/arcface-embedder')",
    ),
}


def time_import(repo: Path, statement: str, setup: str = "") -> float | None:
    """Seconds for `statement` (after `setup`, not timed) in a fresh interpreter whose working directory and
    sys.path start at `repo`; None when it fails there with an ImportError (a module that checkout does not have)."""
    code = f"import time\n{setup}\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}
    )
    if out.returncode != 0:
        if "ImportError" in out.stderr or "ModuleNotFoundError" in out.stderr:
            return None
        raise RuntimeError(f"{statement!r} failed in {repo}:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def time_app_start(repo: Path, app_args: list[str], timeout: float) -> dict[str, float]:
    from gradio_client import Client, handle_file

    photos = dog_photos()
    dogs = sorted(photos)
    a, b = photos[dogs[0]][:2], photos[dogs[0]][2:4] or photos[dogs[1]][:2]
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="petmatch-cold-") as gallery_dir:
        app_file = repo / "app" / "main.py"
        if not app_file.is_file():  # a checkout from before the rename (its app/app.py put its root on sys.path)
            app_file = repo / "app" / "app.py"
        command = [sys.executable, str(app_file), "--host", "127.0.0.1", "--port", str(port)]
        command += ["--gallery-dir", gallery_dir, *app_args]
        launched = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(repo)}  # that checkout's `app` and `model_pkg`, not the installed ones
        app = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            up_s = wait_until_up(url, app, timeout, poll_s=0.1)
            call = time.perf_counter()
            client = Client(url, verbose=False, ssl_verify=False)  # plain http: no TLS context to build
            text, *_ = client.predict([handle_file(p) for p in a], [handle_file(p) for p in b], api_name="/compare_sets")
            answered = time.perf_counter()
            if not text.startswith(("Same animal", "Different animals")):
                raise RuntimeError(f"unexpected first answer: {text!r}")
            # the text-search model loads in the background after start: when can a description be searched?
            hits = client.predict("a dog running on the grass", 4, api_name="/search_text")
            searched = time.perf_counter()
            if len(hits) != 4:
                raise RuntimeError(f"unexpected text-search answer: {hits!r}")
        finally:
            stop_app(app)
    return {
        "ui_up_s": up_s,
        "first_answer_s": answered - launched,
        "first_call_s": answered - call,
        "first_text_search_s": searched - launched,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(ROOT), help="the checkout to measure (default: this one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-app", action="store_true", help="only the import times")
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. which commit)")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--app-args", nargs=argparse.REMAINDER, default=[], help="extra flags for app/main.py")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    if not (repo / "model_pkg" / "__init__.py").is_file():
        raise SystemExit(f"{repo} is not a petmatch checkout (no model_pkg/__init__.py)")
    result: dict = {"label": args.label, "repeats": args.repeats, "imports_s": {}, "cpu_count": os.cpu_count()}
    rows = [("imports_s", name, "", statement) for name, statement in IMPORTS.items()]
    rows += [("loads_s", name, setup, statement) for name, (setup, statement) in LOADS.items()]
    for section, name, setup, statement in rows:
        times = [time_import(repo, statement, setup) for _ in range(args.repeats)]
        timed = [t for t in times if t is not None]
        result.setdefault(section, {})[name] = summary(timed) if len(timed) == len(times) else "unavailable"
        print(name, result[section][name], flush=True)
    if not args.skip_app:
        runs = [time_app_start(repo, args.app_args, args.start_timeout) for _ in range(args.repeats)]
        result["app"] = {key: summary([r[key] for r in runs]) for key in runs[0]}
        print("app", result["app"], flush=True)
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
