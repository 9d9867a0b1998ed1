"""petmatch dashboard: how good the shipped models are, in pictures (Streamlit).

    streamlit run app/dashboard.py                    # reads runs/, results/, bench/results/ of the repository
    streamlit run app/dashboard.py -- --root DIR      # or PETMATCH_DASHBOARD_ROOT=DIR
    streamlit run app/dashboard.py -- --data DIR      # photos (default PETMATCH_DATA, else ../shared/data)

Tabs: an overview (shipped model vs untrained baseline per task and protocol, goals drawn in); the evaluations
grouped by kind; learning curves per training run; ROC and PR curves of saved per-pair scores with a threshold
slider and the shipped model's stored threshold; the gallery's confusion matrix as a heatmap and the most
confused dogs side by side; a 2-D map (PCA / t-SNE) of saved test embeddings with photos on hover.
A fresh clone has every file this needs in bench/results/ (docs/app-and-api.md, "Dashboard and Spaces"); the photos come from the
data folder when it is there. What is read, and the formats: `app/dashboard_data/`; each tab: `app/dashboard_tabs/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

from app import dashboard_data as data
from app.dashboard_tabs import (
    confusion_tab,
    embeddings_tab,
    evaluations_tab,
    overview_tab,
    roc_tab,
    training_tab,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(data.default_root()))
    parser.add_argument("--data", default=str(data.default_data_root()))
    args, _ = parser.parse_known_args(sys.argv[1:])  # `streamlit run app/dashboard.py -- --root DIR`
    return args


def main() -> None:
    st.set_page_config(page_title="petmatch dashboard", page_icon="🐶", layout="wide")
    args = parse_args()
    root, data_root = Path(args.root), Path(args.data)
    st.title("petmatch dashboard")
    # paths relative to where the dashboard was started: what a user typed, and no machine paths in screenshots
    folders = ", ".join(os.path.relpath(root / d) for d in data.RESULT_DIRS if (root / d).is_dir()) or "nowhere yet"
    missing = "" if data_root.is_dir() else " (not there)"
    st.caption(f"Results from {folders}; photos from {os.path.relpath(data_root)}{missing}.")
    tabs = st.tabs(list(data.TABS))
    with tabs[0]:
        overview_tab(root)
    with tabs[1]:
        evaluations_tab(root)
    with tabs[2]:
        training_tab(root)
    with tabs[3]:
        roc_tab(root)
    with tabs[4]:
        confusion_tab(root, data_root)
    with tabs[5]:
        embeddings_tab(root, data_root)


main()
