"""The Evaluations tab: the results JSONs grouped by kind, one expander and table per group."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import dashboard_data as data

from .loaders import cached_groups, results_mtime


def evaluations_tab(root: Path) -> None:
    all_columns = st.toggle("All columns", value=False, help="otherwise each group shows its own main columns")
    groups = cached_groups(str(root), all_columns, results_mtime(root))
    if not groups:
        st.info(f"No evaluation JSONs in {', '.join(str(root / d) for d in data.RESULT_DIRS)}.")
        return
    st.caption(f"{len(groups)} groups of results from {', '.join(data.RESULT_DIRS)}; each JSON is named in its row.")
    for i, (title, table) in enumerate(groups):
        with st.expander(f"{title}  ({len(table)} rows)", expanded=i < 3):
            st.dataframe(table.round(4), hide_index=True)
