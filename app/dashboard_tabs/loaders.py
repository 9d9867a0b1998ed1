"""The dashboard's cached loaders: every file the tabs read goes through here, so a rerun (each widget change) does
not read it again. `st.cache_data` keys an entry by the function's arguments, so each loader takes the file's
modification time (`mtime`) and a rewritten file is read again. Shared by all tabs, hence a module of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import dashboard_data as data
from model_pkg.metrics import roc_pr_curves


def mtime(path: Path) -> float:
    """Part of every cache key, so a rewritten file is read again."""
    return path.stat().st_mtime if path.exists() else 0.0


def results_mtime(root: Path) -> float:
    return max([mtime(p) for d in data.RESULT_DIRS for p in Path(root, d).glob("*.json")], default=0.0)


# -- cached loaders (st.cache_data: keyed by their arguments, so pass the file's mtime) --------------------
# Which files exist: looked up again after a minute (a new run or evaluation shows up without a restart)
@st.cache_data(show_spinner=False, ttl=60)
def found_runs(root: str) -> dict[str, Path]:
    return data.find_runs(Path(root))


@st.cache_data(show_spinner=False, ttl=60)
def found_score_sets(root: str) -> dict[str, dict[str, Path]]:
    return data.score_sets(Path(root))


@st.cache_data(show_spinner=False, ttl=60)
def found_files(root: str, pattern: str, keys: tuple[str, ...] = ()) -> list[Path]:
    return data.find_files(Path(root), data.SCORE_DIRS, pattern, keys)


@st.cache_data(show_spinner=False)
def cached_overview(root: str, stamp: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    scores = data.overview(Path(root))
    return scores, data.overview_goals(scores)


@st.cache_data(show_spinner=False)
def cached_groups(root: str, all_columns: bool, stamp: float) -> list[tuple[str, pd.DataFrame]]:
    return data.evaluation_groups(Path(root), all_columns)


@st.cache_data(show_spinner=False)
def cached_history(path: str, stamp: float) -> pd.DataFrame:
    return data.run_history(Path(path))


@st.cache_data(show_spinner=False)
def cached_scores(path: str, stamp: float):
    labels, scores, threshold = data.load_scores(Path(path))
    return labels, scores, threshold, roc_pr_curves(labels, scores)


@st.cache_data(show_spinner=False)
def cached_confusion(path: str, stamp: float) -> pd.DataFrame:
    return data.load_confusion(Path(path))


@st.cache_resource(show_spinner=False)  # read-only arrays shared by every session: not copied per rerun
def cached_embeddings(path: str, stamp: float) -> data.Embeddings:
    return data.load_embeddings(Path(path))


@st.cache_data(show_spinner="Projecting the embeddings ...")
def cached_projection(path: str, stamp: float, dogs: tuple[str, ...], method: str) -> np.ndarray:
    emb = cached_embeddings(path, stamp)
    return data.project_2d(emb.vectors[np.isin(emb.labels, dogs)], method)


@st.cache_data(show_spinner=False)
def cached_thumbnail(path: str, size: int = 96) -> str:
    return data.thumbnail_data_url(Path(path), size)


def rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def embeddings_files(root: Path) -> list[Path]:
    return found_files(str(root), "*.npz", ("embeddings", "features"))


def photo_embeddings(root: Path) -> data.Embeddings | None:
    """The first saved embeddings that name their photos (for similarities and thumbnails)."""
    for path in embeddings_files(root):
        emb = cached_embeddings(str(path), mtime(path))
        if emb.paths is not None:
            return emb
    return None
