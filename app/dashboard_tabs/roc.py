"""The ROC / PR tab: ROC and PR curves of the saved per-pair scores, a threshold slider with the metrics at it,
the stored (or saved) threshold marked, and the score histograms."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import dashboard_data as data
from model_pkg.metrics import verification_metrics

from .loaders import cached_scores, found_score_sets, mtime, rel


def roc_tab(root: Path) -> None:
    sets = found_score_sets(str(root))
    if not sets:
        st.info(
            "No saved scores: an .npz with 'labels' and 'scores' arrays (`python -m model_pkg.evaluate pair ... "
            "--save-scores FILE.npz`, `bench/bench_pair_quality.py --scores-dir DIR`), or a *scores*.csv with "
            "'label' and 'score'."
        )
        return
    left, right = st.columns(2)
    protocol = left.selectbox("Pairs", list(sets), help="K photos per side; random or hard (lookalike) negatives")
    models = sets[protocol]
    model = right.radio("Threshold slider for", list(models), horizontal=True)
    loaded = {}
    for name, path in models.items():
        try:
            loaded[name] = cached_scores(str(path), mtime(path))
        except ValueError as err:
            st.error(f"Cannot read {rel(path, root)}: {err}")
    if model not in loaded:
        return
    labels, scores, file_threshold, _ = loaded[model]
    set_size = int(protocol.split("v")[0]) if protocol[:1].isdigit() else None
    shipped = model.startswith("shipped")
    stored = data.stored_threshold(root, set_size) if shipped else None
    marked = stored if stored is not None else file_threshold
    marked_name = "stored threshold" if stored is not None else "saved threshold"
    lo, hi = float(scores.min()), max(float(scores.max()), float(scores.min()) + 1e-6)
    default = float(np.clip(marked, lo, hi)) if marked is not None else (lo + hi) / 2
    threshold = st.slider("Threshold", min_value=lo, max_value=hi, value=default, step=max((hi - lo) / 400, 1e-6), format="%.3f")
    now = verification_metrics(labels, scores, threshold)
    then = verification_metrics(labels, scores, marked) if marked is not None else None
    for column, key in zip(st.columns(4), ("accuracy", "precision", "recall", "f1")):
        delta = f"{now[key] - then[key]:+.3f} vs {marked_name}" if then else None
        column.metric(key, f"{now[key]:.3f}", delta=delta if then and abs(now[key] - then[key]) > 5e-4 else None)
    st.caption(
        f"{model}, {protocol}: ROC-AUC {now['roc_auc']:.4f}, PR-AUC {now['pr_auc']:.4f}, {now['num_positive']} same-dog / "
        f"{now['num_negative']} different-dog pairs; a pair is called 'same dog' when its score >= the threshold. "
        + (
            f"Diamond / dashed: the {marked_name} ({'the model config' if stored is not None else 'saved with the scores'}), "
            f"{marked:.4f}. "
            if marked is not None
            else ""
        )
        + "Circle / solid: the slider."
    )

    curves, points = [], []
    for name, (*_, curve) in loaded.items():
        curves.append(pd.DataFrame({"model": name, "fpr": curve["fpr"], "tpr": curve["tpr"], "kind": "roc"}))
        curves.append(pd.DataFrame({"model": name, "fpr": curve["recall"], "tpr": curve["precision"], "kind": "pr"}))
    for what, t in (("slider", threshold), (marked_name, marked)):
        if t is not None:
            p = data.operating_point(labels, scores, t)
            points.append({"model": model, "what": what, "threshold": t, **p, "recall": p["tpr"]})
    lines, marks = pd.concat(curves), pd.DataFrame(points)
    roc_col, pr_col, hist_col = st.columns(3)
    with roc_col:
        st.altair_chart(curve_chart(lines[lines.kind == "roc"], marks, "fpr", "tpr", "ROC"), width="stretch")
    with pr_col:
        st.altair_chart(curve_chart(lines[lines.kind == "pr"], marks, "recall", "precision", "precision-recall"), width="stretch")
    with hist_col:
        st.altair_chart(score_histogram(labels, scores, marks, model), width="stretch")


CURVE_COLOURS = ["#2c6fbb", "#a3acb9", "#2f9e44", "#862e9c"]  # the first (shipped) model as in the overview
AXES = {"fpr": "false positive rate", "tpr": "true positive rate (recall)", "recall": "recall", "precision": "precision"}


def curve_chart(lines: pd.DataFrame, marks: pd.DataFrame, x: str, y: str, title: str) -> alt.LayerChart:
    line = (
        alt.Chart(lines.rename(columns={"fpr": x, "tpr": y}) if x != "fpr" else lines)
        .mark_line(interpolate="step-after" if x == "recall" else "linear")
        .encode(
            x=alt.X(f"{x}:Q", title=AXES[x], scale=alt.Scale(domain=[0, 1])),
            y=alt.Y(f"{y}:Q", title=AXES[y], scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "model:N",
                title=None,
                legend=alt.Legend(orient="bottom", columns=1, labelLimit=300),
                scale=alt.Scale(domain=list(dict.fromkeys(lines["model"])), range=CURVE_COLOURS),
            ),
        )
    )
    dots = (
        alt.Chart(marks)
        .mark_point(size=140, filled=True, stroke="black", strokeWidth=1)
        .encode(
            x=f"{x}:Q",
            y=f"{y}:Q",
            shape=alt.Shape(
                "what:N",
                title=None,
                scale=alt.Scale(domain=["slider", "stored threshold", "saved threshold"], range=["circle", "diamond", "diamond"]),
                legend=None,
            ),
            color=alt.value("#f08c00"),
            tooltip=[
                "what",
                alt.Tooltip("threshold:Q", format=".4f"),
                alt.Tooltip(f"{x}:Q", format=".3f"),
                alt.Tooltip(f"{y}:Q", format=".3f"),
            ],
        )
    )
    return alt.layer(line, dots).properties(title=title, height=330)


def score_histogram(labels: np.ndarray, scores: np.ndarray, marks: pd.DataFrame, model: str) -> alt.LayerChart:
    frame = pd.DataFrame({"score": scores, "pair": np.where(labels == 1, "same dog", "different dogs")})
    bars = (
        alt.Chart(frame)
        .mark_bar(opacity=0.6, binSpacing=0)
        .encode(
            x=alt.X("score:Q", bin=alt.Bin(maxbins=50), title=f"score ({model})"),
            y=alt.Y("count():Q", stack=None, title="pairs"),
            color=alt.Color(
                "pair:N", title=None, scale=alt.Scale(range=["#c92a2a", "#2f9e44"]), legend=alt.Legend(orient="bottom")
            ),
        )
    )
    rules = (
        alt.Chart(marks)
        .mark_rule(strokeWidth=2)
        .encode(
            x="threshold:Q",
            strokeDash=alt.StrokeDash(
                "what:N",
                title=None,
                legend=None,
                scale=alt.Scale(domain=["slider", "stored threshold", "saved threshold"], range=[[1, 0], [5, 3], [5, 3]]),
            ),
            color=alt.value("#f08c00"),
            tooltip=["what", "threshold"],
        )
    )
    return alt.layer(bars, rules).properties(title="scores of same-dog and different-dog pairs", height=330)
