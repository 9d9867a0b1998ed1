"""What the dashboard reads, as plain functions (no Streamlit here), all under one root folder (the repository by
default) plus the photo folder. A fresh clone has every file below in `bench/results/`.

* Overview: the shipped model beside the untrained baseline per task and protocol, from
  ``bench/results/pair_quality.json`` (set vs set), ``gallery_imagenet_g1_u02.json`` / ``gallery_arcface_g1_u02.json``
  (gallery) and ``dual_encoder_curve.json`` (text search: step 0 = untrained, the best step = shipped), with the goals
  of issues 12 and 13 (`GOALS`; "must" goals that are relative to the baseline are computed from it).
* Evaluations: ``results/*.json`` and ``bench/results/*.json`` grouped by kind (`KINDS`, matched by file name), each
  group with its own columns; a list of row dicts (or a ``rows`` / ``results`` / ... list) gives one row each.
* Training runs: ``runs/<run>/**/trainer_state.json`` (HF Trainer; per run the one with the most steps) and the
  shipped models' runs kept small as ``bench/results/runs/<run>/trainer_state.json``.
* Scores for ROC / PR: ``*.npz`` with ``labels`` (0/1) and ``scores`` (optional scalar ``threshold``) or a CSV with
  ``label`` and ``score``; ``pair_scores_<model>_<K>vK_<negatives>.npz`` (``bench_pair_quality.py --scores-dir``,
  ``evaluate pair --save-scores``) are grouped by protocol so the models share one plot. The shipped pair
  matcher's stored threshold per set size is read from its ``config.json``.
* Gallery confusion matrices: ``*confusion*.csv`` (``model_pkg.metrics.save_confusion``), with the PNG beside it.
* Embeddings: ``*.npz`` with ``embeddings`` or ``features`` (N, D), ``labels`` (N,) or ``paths`` (N,); ``paths``
  relative to the data root (``bench/save_test_embeddings.py``) give photo thumbnails.
* Photos: the data root is ``PETMATCH_DATA`` or ``<repo>/../shared/data``, as for the app
  (``app/loading.py``); without it the app's demo photos (``PETMATCH_ASSETS_DIR`` or ``app/assets``:
  ``demo_photos/*/<dog>/<photo>``, 43 test dogs) fill in for the dogs they show.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "GOALS",
    "KINDS",
    "default_root",
    "default_data_root",
    "default_assets_dir",
    "overview",
    "overview_goals",
    "evaluation_groups",
    "find_runs",
    "run_history",
    "runs_table",
    "run_best_step",
    "curve_columns",
    "find_files",
    "score_sets",
    "stored_threshold",
    "gallery_score_threshold",
    "load_scores",
    "operating_point",
    "load_confusion",
    "confusion_pairs",
    "load_embeddings",
    "closest_photos",
    "project_2d",
    "find_photo",
    "thumbnail_data_url",
]

REPO = Path(__file__).resolve().parents[1]
RESULT_DIRS = ("results", "bench/results")
RUN_DIRS = ("runs", "bench/results/runs")  # local training runs; the shipped models' runs
SCORE_DIRS = ("results", "bench/results", "runs")
SHIPPED_PAIR_MODEL = "models/pair-matcher"
SHIPPED_EMBEDDER = "models/arcface-embedder"
TABS = ("Overview", "Evaluations", "Training curves", "ROC / PR", "Gallery confusion", "Embeddings")
BASELINE, SHIPPED = "untrained baseline", "shipped model"


def default_root() -> Path:
    return Path(os.environ.get("PETMATCH_DASHBOARD_ROOT", REPO))


def default_data_root() -> Path:
    """Where the photos are: `PETMATCH_DATA`, else `<repo>/../shared/data` (the app's default)."""
    return Path(os.environ.get("PETMATCH_DATA", REPO.parent / "shared" / "data"))


# --------------------------------------------------------------------------------------------------
# Overview: shipped model vs untrained baseline per task and protocol, with the goals
# --------------------------------------------------------------------------------------------------
# Absolute targets from the issues (12: dogs, 13: text search); percentages in percent, AUCs in [0, 1].
GOALS = [
    *(
        {"task": "set vs set", "protocol": p, "metric": "accuracy %", "kind": "target", "value": v, "source": "issue 12"}
        for p, v in (("1v1 random", 97.5), ("3v3 random", 99.5), ("1v1 hard", 85.0), ("3v3 hard", 96.0))
    ),
    *(
        {"task": "gallery", "protocol": "G=1, 20% unknown", "metric": m, "kind": "target", "value": v, "source": "issue 12"}
        for m, v in (("rank-1 %", 90.0), ("rank-5 %", 97.0), ("open-set AUROC", 0.93))
    ),
    *(
        {"task": "text search", "protocol": "Flickr8k dev", "metric": m, "kind": kind, "value": v, "source": "issue 13"}
        for m, kind, v in (
            ("text->image R@1 %", "must", 26.0),
            ("text->image R@10 %", "must", 70.0),
            ("text->image R@1 %", "target", 35.0),
            ("text->image R@5 %", "target", 65.0),
            ("text->image R@10 %", "target", 80.0),
        )
    ),
]

# "Must" goals of issue 12 that are relative to the untrained baseline on the same pairs:
# metric -> (protocol filter, how far above the baseline)
_RELATIVE_MUSTS = {
    ("set vs set", "accuracy %"): lambda protocol, base: min(base + 3.0, base + (100.0 - base) / 2),  # or half the errors
    ("set vs set", "ROC-AUC"): lambda protocol, base: base + (0.02 if "hard" in protocol else 0.0),
    ("gallery", "rank-1 %"): lambda protocol, base: base + 3.0,
    ("gallery", "open-set AUROC"): lambda protocol, base: base + 0.02,
}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pair_overview(results: Path) -> list[dict]:
    rows = _read_json(results / "pair_quality.json")
    if not isinstance(rows, list):
        return []
    out = []
    for r in rows:
        model = r.get("model", "")
        who = SHIPPED if model == SHIPPED_PAIR_MODEL else BASELINE if model.startswith("imagenet") else None
        if who is None or "set_size" not in r:
            continue
        protocol = f"{r['set_size']} {r.get('negatives', '')}".strip()
        # decisions under one threshold policy for both: chosen on random-negative validation pairs, which is how
        # the shipped thresholds were chosen (for the shipped model it is its stored threshold)
        accuracy = r.get("accuracy_random_val_threshold", r.get("accuracy"))
        out.append({"task": "set vs set", "protocol": protocol, "metric": "accuracy %", "model": who, "value": 100 * accuracy})
        out.append({"task": "set vs set", "protocol": protocol, "metric": "ROC-AUC", "model": who, "value": r["roc_auc"]})
    return out


def _gallery_overview(results: Path) -> list[dict]:
    out = []
    for who, name in ((BASELINE, "gallery_imagenet_g1_u02.json"), (SHIPPED, "gallery_arcface_g1_u02.json")):
        r = _read_json(results / name)
        if not isinstance(r, dict):
            continue
        for metric, key in (("rank-1 %", "rank1"), ("rank-5 %", "rank5"), ("open-set AUROC", "open_set_auroc")):
            if key in r:
                out.append({"task": "gallery", "protocol": "G=1, 20% unknown", "metric": metric, "model": who, "value": r[key]})
    return out


def _text_overview(results: Path) -> list[dict]:
    curve = _read_json(results / "dual_encoder_curve.json")
    if not isinstance(curve, dict) or not curve.get("rows"):
        return []
    by_step = {row["step"]: row for row in curve["rows"]}
    best = curve.get("best_global_step")
    out = []
    for who, row in ((BASELINE, by_step.get(0)), (SHIPPED, by_step.get(best))):
        if row is None:
            continue
        for metric, key in (
            ("text->image R@1 %", "t2i_r1"),
            ("text->image R@5 %", "t2i_r5"),
            ("text->image R@10 %", "t2i_r10"),
            ("image->text R@1 %", "i2t_r1"),
        ):
            if row.get(key) is not None:
                out.append({"task": "text search", "protocol": "Flickr8k dev", "metric": metric, "model": who, "value": row[key]})
    return out


OVERVIEW_SOURCES = {  # task -> (files it reads, the command that writes them)
    "set vs set": (
        "bench/results/pair_quality.json",
        "python bench/bench_pair_quality.py --models imagenet-cosine,models/pair-matcher --json bench/results/pair_quality.json",
    ),
    "gallery": (
        "bench/results/gallery_{imagenet,arcface}_g1_u02.json",
        "python -m model_pkg.evaluate gallery --model {imagenet,models/arcface-embedder} ... (bench/README.md)",
    ),
    "text search": (
        "bench/results/dual_encoder_curve.json",
        "python bench/learning_curve.py runs/dual-encoder ... --json bench/results/dual_encoder_curve.json",
    ),
}


def overview(root: Path) -> pd.DataFrame:
    """Long frame: task, protocol, metric, model (baseline / shipped), value."""
    results = Path(root, "bench", "results")
    rows = _pair_overview(results) + _gallery_overview(results) + _text_overview(results)
    return pd.DataFrame(rows, columns=["task", "protocol", "metric", "model", "value"])


def overview_goals(scores: pd.DataFrame) -> pd.DataFrame:
    """The goals of the metrics in `scores` (`overview`): absolute targets and the musts relative to the baseline."""
    goals = [dict(g) for g in GOALS]
    base = scores[scores["model"] == BASELINE]
    for row in base.itertuples():
        rule = _RELATIVE_MUSTS.get((row.task, row.metric))
        if rule is not None:
            goals.append(
                {
                    "task": row.task,
                    "protocol": row.protocol,
                    "metric": row.metric,
                    "kind": "must",
                    "value": rule(row.protocol, row.value),
                    "source": "issue 12 (relative to the baseline)",
                }
            )
    frame = pd.DataFrame(goals, columns=["task", "protocol", "metric", "kind", "value", "source"])
    shown = scores[["task", "protocol", "metric"]].drop_duplicates()
    return frame.merge(shown, on=["task", "protocol", "metric"])


def overview_table(scores: pd.DataFrame, goals: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per protocol and metric: baseline, shipped, the change, the goals, and whether the must is met."""
    mine = scores[scores["task"] == task]
    if mine.empty:
        return pd.DataFrame()
    table = mine.pivot_table(index=["protocol", "metric"], columns="model", values="value", aggfunc="first", sort=False)
    table = table.reindex(columns=[c for c in (BASELINE, SHIPPED) if c in table.columns])
    if BASELINE in table and SHIPPED in table:
        table["change"] = table[SHIPPED] - table[BASELINE]
    for kind in ("must", "target"):
        g = goals[(goals["task"] == task) & (goals["kind"] == kind)].set_index(["protocol", "metric"])["value"]
        table[f"goal ({kind})"] = g.reindex(table.index)
    if SHIPPED in table:
        for kind in ("must", "target"):
            goal = table[f"goal ({kind})"]
            table[f"{kind} met"] = np.where(goal.isna(), "", np.where(table[SHIPPED] >= goal - 1e-9, "yes", "no"))
    return table.reset_index()


# --------------------------------------------------------------------------------------------------
# Evaluations grouped by kind
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    title: str
    pattern: str  # regex on the file name
    columns: tuple[str, ...]  # shown first, in this order; the rest behind "all columns"
    per_file: bool = False  # files of this kind have different shapes: one table each


KINDS = (
    Kind(
        "Set vs set: pair quality (test dogs)",
        r"pair_quality.*\.json",
        (
            "model",
            "set_size",
            "negatives",
            "accuracy",
            "accuracy_random_val_threshold",
            "accuracy_val_threshold",
            "roc_auc",
            "pr_auc",
            "f1",
            "threshold",
            "threshold_source",
            "num_pairs",
        ),
    ),
    Kind(
        "Gallery identification (test dogs)",
        r"gallery_.*_g\d+_u\d+\.json",
        (
            "model",
            "rank1",
            "rank5",
            "rank10",
            "map",
            "open_set_auroc",
            "known_accuracy",
            "unknown_rejection",
            "balanced_accuracy",
            "threshold_source",
            "gallery_per_id",
            "unknown_fraction",
            "num_known",
            "num_unknown",
        ),
    ),
    Kind(
        "Dog model variants: TTA and s-norm (validation dogs)",
        r"dog_quality_.*\.json",
        ("model", "split", "tta", "snorm", "protocol", "roc_auc", "best_accuracy", "rank1", "open_set_auroc"),
    ),
    Kind(
        "Threshold policies (validation dogs)",
        r"threshold_policy.*\.json",
        ("model", "set_size", "policy", "threshold", "random_acc_new_pairs", "hard_acc_new_pairs"),
    ),
    Kind(
        "Embedder input size (validation dogs)",
        r"arcface_.*_sizes.*\.json",
        ("model", "image_size", "tta_flip", "recall_at_1", "recall_at_5", "map", "calibration.open_set_auroc"),
    ),
    Kind(
        "Text search (Flickr8k dev)",
        r"text_search_(quality|dev).*\.json",
        (
            "model",
            "text_to_image.r1",
            "text_to_image.r5",
            "text_to_image.r10",
            "text_to_image.mrr",
            "image_to_text.r1",
            "image_to_text.r5",
            "image_to_text.r10",
            "image_to_text.mrr",
            "num_images",
            "num_captions",
        ),
    ),
    Kind(
        "Text search recipes",
        r"text_search_recipes.*\.json",
        (
            "run",
            "recipe",
            "dev.text_to_image.r1",
            "dev.text_to_image.r5",
            "dev.text_to_image.r10",
            "dev.image_to_text.r1",
            "best_global_step",
            "epochs",
        ),
    ),
    Kind("Learning curves (validation during training)", r".*_curve\.json", ("source", "step", "epoch", "minutes"), True),
    Kind(
        "Backbone recommendation",
        r"recommend.*\.json",
        (
            "candidate",
            "dog_one_shot_rank1",
            "flickr_t2i_r10",
            "dog_combined",
            "flickr_combined",
            "dog_logme",
            "flickr_logme",
            "dog_knn_loo",
            "flickr_knn_loo",
            "feature_dim",
        ),
    ),
    Kind("Speed", r".*(speed|load).*\.json", ("recipe", "size", "index", "images_per_s", "ms_per_image", "build_s"), True),
    Kind("Reliability drills", r"drill.*\.json", ("drill", "tries", "failures", "data_lost", "seconds", "detail")),
    Kind("Embedding-space alignment", r"alignment.*\.json", ("pair", "preset", "directions"), True),
    Kind("Training summaries", r".*train_summary.*\.json", ("best_global_step", "val.accuracy", "val.roc_auc"), True),
)
_ROW_LISTS = ("rows", "results", "candidates", "runs")


def _flatten(obj: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def _rows_of(data) -> list[dict]:
    """A JSON's rows: a list of dicts, or a dict's row list (its scalars copied into each row), or the dict."""
    if isinstance(data, list):
        return [_flatten(item) for item in data if isinstance(item, dict)]
    if not isinstance(data, dict):
        return []
    for key in _ROW_LISTS:
        if isinstance(data.get(key), list) and data[key] and all(isinstance(i, dict) for i in data[key]):
            parent = {k: v for k, v in _flatten(data).items()}
            return [{**parent, **_flatten(item)} for item in data[key]]
    return [_flatten(data)]


def _table(rows: list[dict], lead: Iterable[str], all_columns: bool) -> pd.DataFrame:
    frame = pd.DataFrame(rows).dropna(axis=1, how="all")
    first = ["file"] + [c for c in lead if c in frame.columns]
    rest = [c for c in frame.columns if c not in first] if all_columns else []
    return frame[first + rest].reset_index(drop=True)


def evaluation_groups(root: Path, all_columns: bool = False) -> list[tuple[str, pd.DataFrame]]:
    """[(title, table)]: the evaluation JSONs grouped by `KINDS`; a table per file for kinds of mixed shapes and for
    files of no kind. Without `all_columns`, a table holds the file and the kind's own columns only."""
    grouped: dict[int, list[dict]] = {}
    tables: list[tuple[int, str, pd.DataFrame]] = []
    for folder in RESULT_DIRS:
        for path in sorted(Path(root, folder).glob("*.json")):
            rows = _rows_of(_read_json(path))
            if not rows:
                continue
            source = str(path.relative_to(root))
            for row in rows:
                row["file"] = source
            index = next((i for i, k in enumerate(KINDS) if re.fullmatch(k.pattern, path.name)), len(KINDS))
            if index == len(KINDS):
                tables.append((index, f"Other: {source}", _table(rows, [], True)))
            elif KINDS[index].per_file:
                tables.append((index, f"{KINDS[index].title}: {path.name}", _table(rows, KINDS[index].columns, True)))
            else:
                grouped.setdefault(index, []).extend(rows)
    tables += [(i, KINDS[i].title, _table(rows, KINDS[i].columns, all_columns)) for i, rows in grouped.items()]
    return [(title, table) for _, title, table in sorted(tables, key=lambda t: t[0])]


# --------------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------------
def find_runs(root: Path) -> dict[str, Path]:
    """Run name -> its trainer_state.json with the largest global_step (local runs and the shipped ones)."""
    runs: dict[str, tuple[int, Path]] = {}
    found = [
        (base, state)
        for base in (Path(root, d) for d in RUN_DIRS)
        for state in sorted(base.glob("*/**/trainer_state.json")) + sorted(base.glob("*/trainer_state.json"))
    ]
    for base, state in found:
        name = state.relative_to(base).parts[0]
        data = _read_json(state)
        if not isinstance(data, dict):
            continue
        step = int(data.get("global_step", 0) or 0)
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


def run_best_step(state_file: Path) -> int | None:
    """The step of the checkpoint the run judged best (HF Trainer's `best_global_step`), if it kept one."""
    step = json.loads(Path(state_file).read_text()).get("best_global_step")
    return int(step) if step is not None else None


_NOT_CURVES = ("runtime", "per_second", "unix_time", "epoch", "learning_rate", "grad_norm")


def curve_columns(history: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(loss columns, validation metric columns) of a run's history."""
    numeric = [c for c in history.columns if pd.api.types.is_numeric_dtype(history[c])]
    numeric = [c for c in numeric if not any(s in c for s in _NOT_CURVES)]
    losses = [c for c in numeric if "loss" in c]
    return losses, [c for c in numeric if c not in losses]


def runs_table(runs: dict[str, Path]) -> pd.DataFrame:
    """One row per run: steps, epochs, the best metric and its step, and the last value of each validation metric."""
    rows = {}
    for name, state_file in runs.items():
        state = json.loads(Path(state_file).read_text())
        history = run_history(state_file)
        row = {
            "steps": state.get("global_step"),
            "epochs": round(float(state.get("epoch") or 0), 1),
            "best metric": state.get("best_metric"),
            "best step": state.get("best_global_step"),
        }
        if not history.empty:
            losses, metrics = curve_columns(history)
            for column in losses + metrics:
                values = history[column].dropna()
                if len(values):
                    row[f"last {column}"] = float(values.iloc[-1])
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------------------------------
# Scores: ROC / PR
# --------------------------------------------------------------------------------------------------
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
    config = _read_json(Path(root, SHIPPED_PAIR_MODEL, "config.json"))
    if not isinstance(config, dict):
        return None
    per_size = config.get("set_size_thresholds") or {}
    value = per_size.get(str(set_size)) if set_size is not None else None
    value = value if value is not None else config.get("threshold")
    return float(value) if value is not None else None


def gallery_score_threshold(root: Path) -> float | None:
    """The shipped embedder's stored gallery score threshold (a top match below it is not accepted), or None."""
    config = _read_json(Path(root, SHIPPED_EMBEDDER, "config.json"))
    value = config.get("score_threshold") if isinstance(config, dict) else None
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


# --------------------------------------------------------------------------------------------------
# Gallery confusion
# --------------------------------------------------------------------------------------------------
DECISIONS = ("unknown", "reshoot")  # the columns of rejected queries (model_pkg.evaluate)


def load_confusion(path: Path) -> pd.DataFrame:
    """A `save_confusion` CSV: rows = true identity, columns = predicted."""
    frame = pd.read_csv(path, index_col=0)
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    return frame


def confusion_pairs(matrix: pd.DataFrame) -> pd.DataFrame:
    """Pairs of dogs mistaken for one another, most mistakes first: dog a, dog b, a->b, b->a, mistakes.

    Only dog-to-dog mistakes count (not the "unknown" / "reshoot" decisions)."""
    dogs = [d for d in matrix.index if d in matrix.columns and d not in DECISIONS]
    m = matrix.loc[dogs, dogs].to_numpy()
    rows = []
    for i, j in zip(*np.nonzero(np.triu(m + m.T, k=1))):
        rows.append({"dog a": dogs[i], "dog b": dogs[j], "a taken for b": int(m[i, j]), "b taken for a": int(m[j, i])})
    frame = pd.DataFrame(rows, columns=["dog a", "dog b", "a taken for b", "b taken for a"])
    frame["mistakes"] = frame["a taken for b"] + frame["b taken for a"]
    return frame.sort_values(["mistakes", "dog a", "dog b"], ascending=[False, True, True], ignore_index=True)


# --------------------------------------------------------------------------------------------------
# Embeddings and photos
# --------------------------------------------------------------------------------------------------
@dataclass
class Embeddings:
    vectors: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) identity as str
    paths: np.ndarray | None  # (N,) photo path relative to the data root, or None
    model: str | None


def load_embeddings(path: Path) -> Embeddings:
    with np.load(path, allow_pickle=False) as data:
        key = "embeddings" if "embeddings" in data.files else "features"
        if key not in data.files:
            raise ValueError(f"{Path(path).name} holds {data.files}: embeddings need an 'embeddings' or 'features' array")
        vectors = data[key].astype(np.float32)
        paths = data["paths"].astype(str) if "paths" in data.files else None
        if "labels" in data.files:
            labels = data["labels"].astype(str)
        elif paths is not None:
            labels = np.array([Path(p).parent.name or Path(p).stem for p in paths])
        else:
            raise ValueError(f"{Path(path).name} has no 'labels' or 'paths' array to colour the points by identity")
        model = str(data["model"]) if "model" in data.files else None
    if vectors.ndim != 2 or len(vectors) != len(labels) or (paths is not None and len(paths) != len(labels)):
        raise ValueError(f"{Path(path).name}: {key} has shape {vectors.shape} but there are {len(labels)} labels")
    return Embeddings(vectors, labels, paths, model)


def closest_photos(emb: Embeddings, dog_a: str, dog_b: str) -> dict | None:
    """The most similar photo pair of two dogs (cosine), with the mean cosine over all their pairs; None if a dog
    has no embeddings."""
    a, b = np.flatnonzero(emb.labels == dog_a), np.flatnonzero(emb.labels == dog_b)
    if not len(a) or not len(b):
        return None
    unit = emb.vectors / np.linalg.norm(emb.vectors, axis=1, keepdims=True).clip(1e-12)
    sims = unit[a] @ unit[b].T  # (|a|, |b|)
    i, j = np.unravel_index(int(np.argmax(sims)), sims.shape)
    return {
        "similarity": float(sims[i, j]),
        "mean similarity": float(sims.mean()),
        "photo a": None if emb.paths is None else str(emb.paths[a[i]]),
        "photo b": None if emb.paths is None else str(emb.paths[b[j]]),
    }


def project_2d(vectors: np.ndarray, method: str = "PCA", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) with scikit-learn PCA or t-SNE (perplexity capped for small N)."""
    if len(vectors) < 3:
        raise ValueError(f"need at least 3 embeddings for a 2-D projection, got {len(vectors)}")
    if method == "PCA":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(vectors) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)


def default_assets_dir() -> Path:
    """The app's assets (`PETMATCH_ASSETS_DIR`, as for the app, else `app/assets`): its demo photos are test dogs."""
    return Path(os.environ.get("PETMATCH_ASSETS_DIR", REPO / "app" / "assets"))


def find_photo(relative: str, data_root: Path, assets_dir: Path | None = None) -> Path | None:
    """A photo given relative to the data root (`dogfacenet/<dog>/<photo>`): under `data_root`, else among the app's
    demo photos (`<assets>/demo_photos/*/<dog>/<photo>`, shipped with the repository); None if neither has it."""
    candidate = Path(data_root, relative)
    if candidate.is_file():
        return candidate
    parts = Path(relative).parts
    if len(parts) >= 2:
        demo = Path(assets_dir or default_assets_dir(), "demo_photos")
        for folder in sorted(demo.glob(f"*/{parts[-2]}")):
            if (folder / parts[-1]).is_file():
                return folder / parts[-1]
    return None


def thumbnail_data_url(path: Path, size: int = 96) -> str:
    """A small JPEG of the photo as a `data:` URL (for chart tooltips, which cannot read local files)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
