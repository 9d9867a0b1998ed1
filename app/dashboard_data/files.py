"""Where the dashboard looks, and the two readers every part of it shares.

The root folders results are read under, the shipped models whose configs hold the stored thresholds, the tab names
(the page and `scripts/screenshot_dashboard.py` use them), a JSON reader that tolerates a missing or broken file, and
a file finder. Separate so the overview, evaluations, runs, scores and gallery modules read files the same way
without importing one another.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RESULT_DIRS = ("results", "bench/results")
RUN_DIRS = ("runs", "bench/results/runs")  # local training runs; the shipped models' runs
SCORE_DIRS = ("results", "bench/results", "runs")
SHIPPED_PAIR_MODEL = "models/pair-matcher"
SHIPPED_EMBEDDER = "models/arcface-embedder"
TABS = ("Overview", "Evaluations", "Training curves", "ROC / PR", "Gallery confusion", "Embeddings")


def default_root() -> Path:
    return Path(os.environ.get("PETMATCH_DASHBOARD_ROOT", REPO))


def read_json(path: Path):
    """The parsed JSON at `path`, or None when the file is missing or not JSON (the dashboard shows what it can)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_files(root: Path, folders, pattern: str, keys: tuple[str, ...] = ()) -> list[Path]:
    """Files matching `pattern` under `folders`; for .npz, only those holding one of `keys` (when given)."""
    found = []
    for folder in folders:
        for path in sorted(Path(root, folder).rglob(pattern)):
            if keys and path.suffix == ".npz":
                try:
                    with np.load(path, allow_pickle=False) as data:
                        if not any(k in data.files for k in keys):
                            continue
                except (OSError, ValueError):
                    continue
            found.append(path)
    return found
