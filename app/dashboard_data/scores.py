"""Scores for ROC / PR: saved per-pair labels and scores grouped by protocol, the shipped pair matcher's stored
threshold per set size, and where a threshold sits on the curves.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .files import SCORE_DIRS, SHIPPED_PAIR_MODEL, find_files, read_json

SCORE_NAMES = {"imagenet_cosine": "untrained baseline (ImageNet cosine)"}  # bench_pair_quality.py's file tags
_PAIR_SCORES = re.compile(r"pair_scores_(?P<model>.+)_(?P<k>\d+)v(?P=k)_(?P<negatives>[a-z]+)")


def score_sets(root: Path) -> dict[str, dict[str, Path]]:
    """Protocol ("3v3 hard", or a file name) -> {model name: scores file}, the shipped model's name first."""
    files = find_files(root, SCORE_DIRS, "*.npz", ("scores",)) + find_files(root, SCORE_DIRS, "*scores*.csv")
    shipped_tag = SHIPPED_PAIR_MODEL.split("/")[-1].replace("-", "_")
    sets: dict[str, dict[str, Path]] = {}
    for path in files:
        match = _PAIR_SCORES.fullmatch(path.stem)
        if match:
            protocol = f"{match['k']}v{match['k']} {match['negatives']}"
            tag = match["model"]
            model = "shipped pair matcher" if tag == shipped_tag else SCORE_NAMES.get(tag, tag.replace("_", " "))
        else:
            protocol, model = str(path.relative_to(root)), path.stem
        sets.setdefault(protocol, {})[model] = path
    for protocol, models in sets.items():
        sets[protocol] = dict(sorted(models.items(), key=lambda m: (not m[0].startswith("shipped"), m[0])))
    return dict(sorted(sets.items()))


def stored_threshold(root: Path, set_size: int | None) -> float | None:
    """The shipped pair matcher's decision threshold for `set_size` photos per side (its config), or None."""
    config = read_json(Path(root, SHIPPED_PAIR_MODEL, "config.json"))
    if not isinstance(config, dict):
        return None
    per_size = config.get("set_size_thresholds") or {}
    value = per_size.get(str(set_size)) if set_size is not None else None
    value = value if value is not None else config.get("threshold")
    return float(value) if value is not None else None


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


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Where `score >= threshold` sits on the ROC (fpr, tpr) and PR (recall, precision) curves."""
    predicted = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    tp = float(np.sum(predicted & positives))
    return {
        "fpr": float(np.sum(predicted & negatives) / max(negatives.sum(), 1)),
        "tpr": tp / max(float(positives.sum()), 1.0),
        "precision": tp / float(predicted.sum()) if predicted.any() else 1.0,
    }
