"""What the dashboard reads, as plain functions (no Streamlit here): training logs, evaluation JSONs, scores,
confusion matrices and embeddings found under one root folder (the repository by default).

* Training runs: ``runs/<run>/**/trainer_state.json`` (HF Trainer; per run the one with the most steps),
  its ``log_history`` -> one row per logged step; the shipped models' runs are kept, small, as
  ``bench/results/runs/<run>/trainer_state.json``, so a fresh clone has curves to show.
* Evaluations: ``results/*.json`` and ``bench/results/*.json`` (``python -m model_pkg.evaluate ... --json``, the
  bench scripts): numbers flattened to ``a.b`` columns; a list of row dicts gives one row each.
* Scores for ROC / PR: ``*.npz`` with ``labels`` (0/1) and ``scores`` arrays (optional scalar ``threshold``), or
  a CSV with ``label`` and ``score`` columns, under ``results/``, ``bench/results/`` or ``runs/``.
* Gallery confusion matrices: ``*confusion*.csv`` as written by ``model_pkg.metrics.save_confusion``.
* Embeddings: ``*.npz`` with ``embeddings`` or ``features`` (N, D) and ``labels`` (N,) or ``paths`` (N,) -- the
  identity is then the photo's folder, e.g. the feature cache's ``12/12.3.jpg``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "default_root",
    "find_runs",
    "run_history",
    "runs_table",
    "evaluation_table",
    "find_files",
    "load_scores",
    "load_confusion",
    "load_embeddings",
    "project_2d",
]

RESULT_DIRS = ("results", "bench/results")
RUN_DIRS = ("runs", "bench/results/runs")  # local training runs; the shipped models' runs
SCORE_DIRS = ("results", "bench/results", "runs")


def default_root() -> Path:
    return Path(os.environ.get("PETMATCH_DASHBOARD_ROOT", Path(__file__).resolve().parents[1]))


def find_runs(root: Path) -> dict[str, Path]:
    """Run name -> its trainer_state.json with the largest global_step."""
    runs: dict[str, tuple[int, Path]] = {}
    found = [
        (base, state)
        for base in (Path(root, d) for d in RUN_DIRS)
        for state in sorted(base.glob("*/**/trainer_state.json")) + sorted(base.glob("*/trainer_state.json"))
    ]
    for base, state in found:
        name = state.relative_to(base).parts[0]
        try:
            step = int(json.loads(state.read_text()).get("global_step", 0))
        except (OSError, ValueError):
            continue
        if name not in runs or step > runs[name][0]:
            runs[name] = (step, state)
    return {name: path for name, (_, path) in sorted(runs.items())}


def run_history(state_file: Path) -> pd.DataFrame:
    """`log_history` as a frame indexed by step; train and eval entries merged on their step."""
    history = json.loads(Path(state_file).read_text()).get("log_history", [])
    frame = pd.DataFrame([h for h in history if "step" in h])
    if frame.empty:
        return frame
    return frame.groupby("step").last().sort_index()


def runs_table(runs: dict[str, Path]) -> pd.DataFrame:
    """One row per run: steps, best metric and the last value of every logged number."""
    rows = {}
    for name, state_file in runs.items():
        state = json.loads(Path(state_file).read_text())
        history = run_history(state_file)
        row = {"global_step": state.get("global_step"), "best_metric": state.get("best_metric")}
        for column in history.columns:
            values = pd.to_numeric(history[column], errors="coerce").dropna()
            if len(values):
                row[f"last {column}"] = float(values.iloc[-1])
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _flatten(obj, prefix: str = "") -> dict:
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def evaluation_table(root: Path) -> pd.DataFrame:
    """Every evaluation JSON side by side: one row per file (or per row of a JSON list), numbers as columns."""
    rows = []
    for folder in RESULT_DIRS:
        for path in sorted(Path(root, folder).glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            source = str(path.relative_to(root))
            items = data if isinstance(data, list) else data.get("rows", [data]) if isinstance(data, dict) else []
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    rows.append({"file": source if len(items) == 1 else f"{source} [{i}]", **_flatten(item)})
    return pd.DataFrame(rows).set_index("file") if rows else pd.DataFrame()


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


def load_scores(path: Path) -> tuple[np.ndarray, np.ndarray, float | None]:
    """-> (labels 0/1, scores, stored threshold or None)."""
    path = Path(path)
    if path.suffix == ".csv":
        frame = pd.read_csv(path)
        missing = {"label", "score"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path.name} has no {sorted(missing)} column(s): a scores CSV needs 'label' and 'score'")
        return frame["label"].to_numpy(int), frame["score"].to_numpy(float), None
    with np.load(path, allow_pickle=False) as data:
        if "labels" not in data.files or "scores" not in data.files:
            raise ValueError(f"{path.name} holds {data.files}: a scores file needs 'labels' and 'scores' arrays")
        threshold = float(data["threshold"]) if "threshold" in data.files else None
        return data["labels"].astype(int), data["scores"].astype(float), threshold


def load_confusion(path: Path) -> pd.DataFrame:
    """A `save_confusion` CSV: rows = true identity, columns = predicted."""
    frame = pd.read_csv(path, index_col=0)
    frame.index = frame.index.astype(str)
    return frame


def load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> (embeddings (N, D) float32, identity labels (N,) as strings)."""
    with np.load(path, allow_pickle=False) as data:
        key = "embeddings" if "embeddings" in data.files else "features"
        if key not in data.files:
            raise ValueError(f"{Path(path).name} holds {data.files}: embeddings need an 'embeddings' or 'features' array")
        vectors = data[key].astype(np.float32)
        if "labels" in data.files:
            labels = data["labels"].astype(str)
        elif "paths" in data.files:
            labels = np.array([Path(str(p)).parent.name or Path(str(p)).stem for p in data["paths"]])
        else:
            raise ValueError(f"{Path(path).name} has no 'labels' or 'paths' array to colour the points by identity")
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise ValueError(f"{Path(path).name}: {key} has shape {vectors.shape} but there are {len(labels)} labels")
    return vectors, labels


def project_2d(vectors: np.ndarray, method: str = "PCA", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) with scikit-learn PCA or t-SNE (perplexity capped for small N)."""
    if len(vectors) < 3:
        raise ValueError(f"need at least 3 embeddings for a 2-D projection, got {len(vectors)}")
    if method == "PCA":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=min(30.0, (len(vectors) - 1) / 3), init="pca", random_state=seed).fit_transform(
        vectors
    )
