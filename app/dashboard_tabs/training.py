"""The Training curves tab: loss and validation metrics per logged step of each run, the best checkpoint dashed,
and the runs side by side."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app import dashboard_data as data

from .loaders import cached_history, found_runs, mtime, rel


def long_frame(history: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = history[columns].reset_index().melt(id_vars="step", var_name="series", value_name="value")
    return frame.dropna().assign(series=lambda f: f["series"].str.removeprefix("eval_"))


def line_chart(frame: pd.DataFrame, title: str, best_step: int | None) -> alt.LayerChart:
    lines = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="right", labelLimit=140)),
            tooltip=["series", "step", alt.Tooltip("value:Q", format=".4g")],
        )
    )
    layers = [lines]
    if best_step is not None:
        rule = alt.Chart(pd.DataFrame({"step": [best_step], "what": ["best checkpoint"]}))
        layers.append(rule.mark_rule(strokeDash=[4, 3], color="#555").encode(x="step:Q", tooltip=["what", "step"]))
    return alt.layer(*layers).properties(title=title, height=260)


def training_tab(root: Path) -> None:
    runs = found_runs(str(root))
    if not runs:
        st.info(
            f"No training runs: looked for {root / 'runs'}/<run>/**/trainer_state.json and "
            f"{root / 'bench/results/runs'}/<run>/trainer_state.json (scripts/learning_curve.py --keep-state)."
        )
        return
    names = st.multiselect("Runs", list(runs), default=list(runs))
    st.caption(
        "Loss per logged step, and the validation metrics the run evaluated during training; the dashed line is "
        "the checkpoint the run judged best by its validation metric (bench/README.md says which one shipped). The pair "
        "matcher has no run of its own: it is built from the embedder."
    )
    for name in names:
        state = runs[name]
        history = cached_history(str(state), mtime(state))
        st.subheader(f"{name}  ({rel(state, root)})")
        if history.empty:
            st.info("This run logged nothing yet.")
            continue
        best = data.run_best_step(state)
        losses, metrics = data.curve_columns(history)
        percent = [m for m in metrics if history[m].max() > 1.5]
        fractions = [m for m in metrics if m not in percent]
        charts = [(losses, "loss"), (percent, "validation metrics (percent)"), (fractions, "validation metrics (0-1)")]
        charts = [(cols, title) for cols, title in charts if cols]
        for column, (cols, title) in zip(st.columns(len(charts)), charts):
            with column:
                st.altair_chart(line_chart(long_frame(history, cols), title, best), width="stretch")
    if names:
        st.subheader("Runs side by side")
        st.dataframe(data.runs_table({n: runs[n] for n in names}).round(4))
