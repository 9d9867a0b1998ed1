"""Evaluations: every results JSON, grouped by kind (`KINDS`, matched by file name), each group with its own
columns, and what each group's chart draws (`chart_frame`). Its own module because the kinds and the flattening of
nested JSON rows are a job of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .files import RESULT_DIRS, read_json


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
            rows = _rows_of(read_json(path))
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


# Numbers that describe a row rather than measure it: part of its label, never drawn as a metric
_SETTINGS = {"set_size", "image_size", "size", "step", "epoch", "gallery_per_id"}
_NOT_METRICS = ("threshold", "seconds", "num_", "unix_time", "temperature", "best_global_step", "epochs", "minutes", "seed")
_NOT_METRIC_PREFIXES = ("config.", "args.", "chosen.", "fitted_on.", "threads", "cpu", "clients", "queries", "repeats", "photos")


def chart_frame(table: pd.DataFrame, max_metrics: int = 4, max_rows: int = 30) -> pd.DataFrame:
    """What the Evaluations tab draws for one group: a long frame (row, metric, value) of its first `max_metrics`
    measured columns, in the table's order, for its first `max_rows` rows; empty when the group has none.

    A row's label joins its text and setting columns (model, set size, negatives ...), and the file's name when two
    rows would otherwise read the same. Thresholds, timings and counts are settings, not drawn."""
    numeric = [
        c
        for c in table.columns
        if pd.api.types.is_numeric_dtype(table[c])
        and not pd.api.types.is_bool_dtype(table[c])
        and c not in _SETTINGS
        and not any(part in c for part in _NOT_METRICS)
        and not c.split(".", 1)[-1].startswith(_NOT_METRIC_PREFIXES)
        and not c.startswith(_NOT_METRIC_PREFIXES)
        and table[c].notna().any()
    ]
    metrics = numeric[:max_metrics]
    if not metrics:
        return pd.DataFrame(columns=["row", "metric", "value"])
    rows = table.head(max_rows)
    described = [
        c
        for c in rows.columns
        if c != "file" and c not in numeric and (c in _SETTINGS or not pd.api.types.is_numeric_dtype(rows[c]))
    ]
    labels = (
        rows[described[:4]].apply(lambda r: " · ".join(str(v) for v in r if pd.notna(v)), axis=1)
        if described
        else rows["file"].astype(str)
    )
    if labels.duplicated().any():
        labels = labels + " (" + rows["file"].astype(str).map(lambda f: Path(f).stem) + ")"
    if labels.duplicated().any():
        labels = labels + " #" + pd.Series(range(len(rows)), index=rows.index).astype(str)
    frame = rows[metrics].assign(row=labels.values).melt(id_vars="row", var_name="metric", value_name="value")
    return frame.dropna(subset=["value"]).reset_index(drop=True)
