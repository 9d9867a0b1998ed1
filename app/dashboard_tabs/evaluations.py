"""The Evaluations tab: the results JSONs grouped by kind, one expander per group with its chart (the group's main
measured columns, one panel per metric) above its table."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app import dashboard_data as data

from .loaders import cached_groups, results_mtime


def metrics_chart(frame: pd.DataFrame) -> alt.FacetChart:
    """Horizontal bars, one panel per metric (each with its own scale: percents beside fractions), a row per result."""
    rows = frame["row"].nunique()
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            y=alt.Y("row:N", sort=None, title=None, axis=alt.Axis(labelLimit=260)),
            x=alt.X("value:Q", title=None),
            color=alt.Color("metric:N", legend=None),
            tooltip=["row", "metric", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(width=170, height=max(60, 16 * rows))
    )
    return alt.layer(bars, data=frame).facet(column=alt.Column("metric:N", title=None, sort=None)).resolve_scale(x="independent")


def evaluations_tab(root: Path) -> None:
    all_columns = st.toggle("All columns", value=False, help="otherwise each group shows its own main columns")
    groups = cached_groups(str(root), all_columns, results_mtime(root))
    if not groups:
        st.info(f"No evaluation JSONs in {', '.join(str(root / d) for d in data.RESULT_DIRS)}.")
        return
    st.caption(
        f"{len(groups)} groups of results from {', '.join(data.RESULT_DIRS)}; each JSON is named in its row. Each group "
        "draws its first measured columns (first 30 rows); thresholds, timings and counts stay in the table."
    )
    for i, (title, table) in enumerate(groups):
        with st.expander(f"{title}  ({len(table)} rows)", expanded=i < 3):
            frame = data.chart_frame(table)
            if not frame.empty:
                st.altair_chart(metrics_chart(frame), width="content")
            st.dataframe(table.round(4), hide_index=True)
