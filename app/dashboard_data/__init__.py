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
  relative to the data root (``scripts/save_test_embeddings.py``) give photo thumbnails.
* Photos: the data root is ``PETMATCH_DATA`` or ``<repo>/../shared/data``, as for the app
  (``app/loading.py``); without it the app's demo photos (``PETMATCH_ASSETS_DIR`` or ``app/assets``:
  ``demo_photos/*/<dog>/<photo>``, 43 test dogs) fill in for the dogs they show.

One module per part, each reading its files on its own: `files` (the folders, the shipped models, the tab names,
the shared readers), `overview`, `evaluations`, `runs`, `scores` (ROC / PR), `gallery` (confusion), `embeddings`,
`photos`. This package re-exports them, so callers write `from app import dashboard_data as data`.
"""

from __future__ import annotations

from .embeddings import Embeddings, closest_photos, load_embeddings, project_2d
from .evaluations import KINDS, Kind, chart_frame, evaluation_groups
from .files import (
    REPO,
    RESULT_DIRS,
    RUN_DIRS,
    SCORE_DIRS,
    SHIPPED_EMBEDDER,
    SHIPPED_PAIR_MODEL,
    TABS,
    default_root,
    find_files,
    read_json,
)
from .gallery import DECISIONS, confusion_pairs, gallery_score_threshold, load_confusion
from .overview import BASELINE, GOALS, OVERVIEW_SOURCES, SHIPPED, overview, overview_goals, overview_table
from .photos import default_assets_dir, default_data_root, find_photo, thumbnail_data_url
from .runs import curve_columns, find_runs, run_best_step, run_history, runs_table
from .scores import SCORE_NAMES, load_scores, operating_point, score_sets, stored_threshold

__all__ = [
    "GOALS",
    "KINDS",
    "default_root",
    "default_data_root",
    "default_assets_dir",
    "overview",
    "overview_goals",
    "chart_frame",
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
    # also read by the page (app/dashboard.py, app/dashboard_tabs/) and scripts/screenshot_dashboard.py
    "BASELINE",
    "DECISIONS",
    "OVERVIEW_SOURCES",
    "REPO",
    "RESULT_DIRS",
    "RUN_DIRS",
    "SCORE_DIRS",
    "SCORE_NAMES",
    "SHIPPED",
    "SHIPPED_EMBEDDER",
    "SHIPPED_PAIR_MODEL",
    "TABS",
    "Embeddings",
    "Kind",
    "overview_table",
    "read_json",
]
