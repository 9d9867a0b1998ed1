"""Evaluations: every results JSON, grouped by kind (`KINDS`, matched by file name), each group with its own
columns. Its own module because the kinds and the flattening of nested JSON rows are a job of their own.
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
