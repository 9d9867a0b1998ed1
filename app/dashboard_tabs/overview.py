"""The Overview tab: per task, the shipped model beside the untrained baseline as bars with the goals as ticks,
and a small table with the change and whether each goal is met."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app import dashboard_data as data

from .loaders import cached_overview, results_mtime

PALETTE = alt.Scale(
    domain=[data.BASELINE, data.SHIPPED, "goal: must", "goal: target"], range=["#a3acb9", "#2c6fbb", "#f08c00", "#c92a2a"]
)


TASK_NOTES = {
    "set vs set": "Same dog or not, from K photos per side; 178 test dogs never trained on, 1,000 pairs per protocol. "
    "Accuracy at the threshold chosen on random-negative validation pairs (for the shipped model: its stored one).",
    "gallery": "Identify a photo among registered dogs (1 photo each) or reject it as unknown (20% of the dogs are "
    "not registered); 178 test dogs.",
    "every kind of photo": "Issue 32: dog faces, whole dogs, cat faces, cats in photos, and all four in one gallery; "
    "the validation pets (DogFaceNet validation dogs, MPDD, 12 cats), G=1, 20% unknown, 1,000 1v1 pairs, 3 draws. "
    "The shipped models as the app runs them (intake, fusion, stored thresholds); the baseline's accuracy is at its "
    "best threshold. The fusion was fitted on these pets: the figures are in-sample for its weights and thresholds.",
    "text search": "Find the photo from a caption: 1,000 Flickr8k dev photos x 5,000 captions. The untrained baseline is "
    "the shipped model's own run at step 0 (frozen towers, random projections: chance).",
}


def chance(task: str, metric: str) -> float:
    """Where the y axis starts: chance level (balanced same / different pairs, AUCs), else zero."""
    if task == "set vs set" or "AUC" in metric or "AUROC" in metric:
        return 50.0 if metric.endswith("%") else 0.5
    return 0.0


def bar_chart(scores: pd.DataFrame, goals: pd.DataFrame, task: str, metric: str, narrow: bool) -> alt.LayerChart:
    percent = metric.endswith("%")
    fmt = ".1f" if percent else ".3f"
    top = 100.0 if percent else 1.0
    y = alt.Y("value:Q", title=metric, scale=alt.Scale(domain=[chance(task, metric), top], clamp=True))
    bars = (
        alt.Chart(scores)
        .mark_bar(clip=True)
        .encode(
            x=alt.X("protocol:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("model:N", sort=[data.BASELINE, data.SHIPPED]),
            y=y,
            color=alt.Color(
                "model:N",
                scale=PALETTE,
                title=None,
                legend=alt.Legend(orient="bottom", columns=1 if narrow else 2, labelLimit=220),
            ),
            tooltip=["protocol", "model", alt.Tooltip("value:Q", format=fmt)],
        )
    )
    labels = bars.mark_text(dy=-7, fontSize=11, color="#333").encode(text=alt.Text("value:Q", format=fmt))
    goal_marks = (
        alt.Chart(goals.assign(series="goal: " + goals["kind"]))
        .mark_tick(thickness=3, size=46)
        .encode(
            x=alt.X("protocol:N", sort=None),
            y=y,
            color=alt.Color("series:N", scale=PALETTE),
            tooltip=["protocol", alt.Tooltip("series:N", title="goal"), alt.Tooltip("value:Q", format=fmt), "source"],
        )
    )
    return alt.layer(bars, labels, goal_marks).properties(title=metric, height=280)


def overview_tab(root: Path) -> None:
    scores, goals = cached_overview(str(root), results_mtime(root))
    st.caption(
        "The shipped models beside the untrained ImageNet baseline on the same data; ticks mark the goals "
        "(orange: must, relative to the baseline where the issue says so; red: target; issues 12 and 13). Pair "
        "accuracy, ROC-AUC and open-set AUROC axes start at chance (50% / 0.5)."
    )
    for task, note in TASK_NOTES.items():
        st.subheader(task.capitalize())
        mine, mine_goals = scores[scores["task"] == task], goals[goals["task"] == task]
        if mine.empty:
            files, command = data.OVERVIEW_SOURCES[task]
            st.info(f"No {task} results: {files} is missing. Make it with `{command}`.")
            continue
        st.caption(note)
        metrics = list(dict.fromkeys(mine["metric"]))
        for column, metric in zip(st.columns(len(metrics)), metrics):
            with column:
                chart = bar_chart(
                    mine[mine["metric"] == metric], mine_goals[mine_goals["metric"] == metric], task, metric, len(metrics) > 3
                )
                st.altair_chart(chart, width="stretch")
        st.dataframe(readable(data.overview_table(scores, goals, task)), hide_index=True, width="content")


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """Numbers as text with the digits their metric needs (percent: 1 decimal, 0-1 scores: 4), blanks for none."""

    def cell(value, metric: str, signed: bool) -> str:
        if isinstance(value, str):
            return value
        if value is None or pd.isna(value):
            return ""
        digits = 1 if metric.endswith("%") else 4
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"

    out = table.copy()
    for column in out.columns:
        if column not in ("protocol", "metric"):
            out[column] = [cell(v, m, column == "change") for v, m in zip(out[column], out["metric"])]
    return out
