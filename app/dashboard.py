"""petmatch dashboard: how good the shipped models are, in pictures (Streamlit).

    streamlit run app/dashboard.py                    # reads runs/, results/, bench/results/ of the repository
    streamlit run app/dashboard.py -- --root DIR      # or PETMATCH_DASHBOARD_ROOT=DIR
    streamlit run app/dashboard.py -- --data DIR      # photos (default PETMATCH_DATA, else ../shared/data)

Tabs: an overview (shipped model vs untrained baseline per task and protocol, goals drawn in); the evaluations
grouped by kind; learning curves per training run; ROC and PR curves of saved per-pair scores with a threshold
slider and the shipped model's stored threshold; the gallery's confusion matrix as a heatmap and the most
confused dogs side by side; a 2-D map (PCA / t-SNE) of saved test embeddings with photos on hover.
A fresh clone has every file this needs in bench/results/ (bench/README.md, "Dashboard"); the photos come from the
data folder when it is there. What is read, and the formats: `app/dashboard_data.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import altair as alt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app import dashboard_data as data  # noqa: E402
from model_pkg.metrics import roc_pr_curves, verification_metrics  # noqa: E402

PALETTE = alt.Scale(
    domain=[data.BASELINE, data.SHIPPED, "goal: must", "goal: target"], range=["#a3acb9", "#2c6fbb", "#f08c00", "#c92a2a"]
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(data.default_root()))
    parser.add_argument("--data", default=str(data.default_data_root()))
    args, _ = parser.parse_known_args(sys.argv[1:])  # `streamlit run app/dashboard.py -- --root DIR`
    return args


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


# -- Overview -------------------------------------------------------------------------------------------------
TASK_NOTES = {
    "set vs set": "Same dog or not, from K photos per side; 178 test dogs never trained on, 1,000 pairs per protocol. "
    "Accuracy at the threshold chosen on random-negative validation pairs (for the shipped model: its stored one).",
    "gallery": "Identify a photo among registered dogs (1 photo each) or reject it as unknown (20% of the dogs are "
    "not registered); 178 test dogs.",
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


# -- Evaluations ---------------------------------------------------------------------------------------------
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


# -- Training curves -----------------------------------------------------------------------------------------
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
            f"{root / 'bench/results/runs'}/<run>/trainer_state.json (bench/learning_curve.py --keep-state)."
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


# -- ROC / PR ------------------------------------------------------------------------------------------------
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


# -- Gallery confusion ---------------------------------------------------------------------------------------
def embeddings_files(root: Path) -> list[Path]:
    return found_files(str(root), "*.npz", ("embeddings", "features"))


def photo_embeddings(root: Path) -> data.Embeddings | None:
    """The first saved embeddings that name their photos (for similarities and thumbnails)."""
    for path in embeddings_files(root):
        emb = cached_embeddings(str(path), mtime(path))
        if emb.paths is not None:
            return emb
    return None


def heatmap(matrix: pd.DataFrame, only_mistakes: bool) -> alt.Chart:
    cells = matrix.rename_axis(index="true", columns="decided").stack().rename("count").reset_index()
    cells = cells[cells["count"] > 0]
    order = list(matrix.index)
    if only_mistakes:
        wrong = cells[cells["true"] != cells["decided"]]
        involved = set(wrong["true"]) | set(wrong["decided"])
        cells = cells[cells["true"].isin(involved) & cells["decided"].isin(involved)]
        order = [d for d in order if d in involved]
    cells = cells.assign(kind=np.where(cells["true"] == cells["decided"], "right", "mistake"))
    size = min(760, max(300, 6 * len(order)))
    return (
        alt.Chart(cells)
        .mark_rect()
        .encode(
            x=alt.X("decided:N", sort=order, title="decided (a dog, unknown or reshoot)", axis=alt.Axis(labels=len(order) <= 60)),
            y=alt.Y("true:N", sort=order, title="true dog", axis=alt.Axis(labels=len(order) <= 60)),
            color=alt.Color("count:Q", scale=alt.Scale(type="log", scheme="blues"), title="queries"),
            stroke=alt.condition("datum.kind == 'mistake'", alt.value("#c92a2a"), alt.value(None)),
            tooltip=["true", "decided", "count", "kind"],
        )
        .properties(width=size, height=size, title=f"{len(order)} x {len(order)} (empty cells are zero)")
    )


def show_photo(column, relative: str | None, data_root: Path, caption: str) -> bool:
    found = data.find_photo(relative, data_root) if relative else None
    if found is None:
        column.markdown(f"*{caption}*  \n(photo not found)")
        return False
    column.image(str(found), caption=caption, width=150)
    return True


def confusion_tab(root: Path, data_root: Path) -> None:
    files = found_files(str(root), "*confusion*.csv")
    if not files:
        st.info("No gallery confusion matrix (a *confusion*.csv: `python -m model_pkg.evaluate gallery ... --confusion PREFIX`).")
        return
    names = [rel(f, root) for f in files]
    default = next((i for i, n in enumerate(names) if "arcface" in n), 0)
    choice = st.selectbox("Confusion matrix", names, index=default)
    path = root / choice
    matrix = cached_confusion(str(path), mtime(path))
    dogs = [d for d in matrix.index if d not in data.DECISIONS and d in matrix.columns]
    known = matrix.loc[dogs]
    right = int(sum(known.at[d, d] for d in dogs))
    columns = st.columns(4)
    columns[0].metric("queries of registered dogs", int(known.to_numpy().sum()))
    columns[1].metric("identified right", f"{right / max(int(known.to_numpy().sum()), 1):.1%}")
    columns[2].metric("taken for another dog", int(known[dogs].to_numpy().sum()) - right)
    columns[3].metric("rejected (unknown / reshoot)", int(known[[c for c in data.DECISIONS if c in known]].to_numpy().sum()))
    st.caption(
        f"Rows: the true dog ({len(dogs)} registered dogs, then 'unknown' for every query of an unregistered dog); "
        "columns: the gallery's decision at its thresholds. Red outlines are mistakes; hover a cell for the dogs."
    )
    only = st.toggle("Only dogs involved in a mistake", value=len(dogs) > 40)
    st.altair_chart(heatmap(matrix, only), width="content")
    png = path.with_suffix(".png")
    if png.is_file():
        with st.expander("The PNG that `evaluate gallery` drew"):
            st.image(str(png), width=700)

    st.subheader("Most confused dogs")
    pairs = data.confusion_pairs(matrix)
    if pairs.empty:
        st.success("No dog was taken for another one.")
        return
    emb = photo_embeddings(root)
    accept = data.gallery_score_threshold(root)
    if emb is not None and accept is not None:
        st.caption(f"For scale: the shipped gallery accepts a match from a similarity of {accept:.3f} (its stored threshold).")
    shown = st.slider("Pairs shown", 1, min(len(pairs), 20), min(len(pairs), 6)) if len(pairs) > 1 else 1
    if emb is None:
        st.info("No saved embeddings with photo paths (bench/save_test_embeddings.py): similarities and photos are not shown.")
    missing_photos = False
    for row in pairs.head(shown).itertuples(index=False):
        a, b, ab, ba, total = row
        close = data.closest_photos(emb, a, b) if emb is not None else None
        photo_a, photo_b, text = st.columns([1, 1, 2])
        ok_a = show_photo(photo_a, close and close["photo a"], data_root, f"dog {a}")
        ok_b = show_photo(photo_b, close and close["photo b"], data_root, f"dog {b}")
        missing_photos |= close is not None and not (ok_a and ok_b)
        lines = [f"**dog {a} and dog {b}**: {total} mistake{'s' * (total != 1)} ({a} taken for {b}: {ab}, {b} for {a}: {ba})"]
        if close is not None:
            lines.append(
                f"similarity of their closest photos (shown): **{close['similarity']:.3f}**; mean over all their photo "
                f"pairs {close['mean similarity']:.3f} ({emb.model or 'saved embeddings'})"
            )
        elif emb is not None:
            lines.append("(no saved embeddings of these dogs)")
        text.markdown("  \n".join(lines))
    if missing_photos:
        st.info(f"Photos not found under {data_root}: set PETMATCH_DATA (or `-- --data DIR`) to the folder holding dogfacenet/.")
    with st.expander("All confused pairs"):
        st.dataframe(pairs, hide_index=True)


# -- Embeddings ----------------------------------------------------------------------------------------------
def embeddings_tab(root: Path, data_root: Path) -> None:
    files = embeddings_files(root)
    if not files:
        st.info(
            "No saved embeddings: an .npz with 'embeddings' (or 'features') and 'labels' (or 'paths'), "
            "e.g. `python bench/save_test_embeddings.py`."
        )
        return
    left, middle, right = st.columns([2, 1, 2])
    choice = left.selectbox("Embeddings", [rel(f, root) for f in files])
    method = middle.radio("Projection", ["t-SNE", "PCA"], horizontal=True)
    path = root / choice
    try:
        emb = cached_embeddings(str(path), mtime(path))
    except ValueError as err:
        st.error(f"Cannot read {choice}: {err}")
        return
    identities, counts = np.unique(emb.labels, return_counts=True)
    ranked = identities[np.argsort(-counts, kind="stable")]
    most = len(identities)
    if most > 1:
        most = right.slider("Dogs shown (most photos first)", 1, most, min(most, 15))
    dogs = tuple(sorted(ranked[:most]))
    keep = np.isin(emb.labels, dogs)
    try:
        points = cached_projection(str(path), mtime(path), dogs, method)
    except ValueError as err:
        st.error(str(err))
        return
    frame = pd.DataFrame({"x": points[:, 0], "y": points[:, 1], "dog": emb.labels[keep]})
    tooltip = ["dog"]
    if emb.paths is not None:
        frame["photo"] = emb.paths[keep]
        found = [data.find_photo(p, data_root) for p in frame["photo"]]
        if any(found):
            # vega-tooltip shows a field named "image" as a picture
            frame["image"] = [cached_thumbnail(str(f)) if f is not None else None for f in found]
            tooltip = ["image", "dog", "photo"]
        else:
            tooltip = ["dog", "photo"]
    chart = (
        alt.Chart(frame)
        .mark_circle(size=70, opacity=0.85)
        .encode(
            x=alt.X("x:Q", title=f"{method} 1", axis=alt.Axis(labels=False)),
            y=alt.Y("y:Q", title=f"{method} 2", axis=alt.Axis(labels=False)),
            color=alt.Color("dog:N", scale=alt.Scale(scheme="category20"), legend=alt.Legend(columns=2) if most <= 20 else None),
            tooltip=tooltip,
        )
        .properties(height=560)
    )
    st.altair_chart(chart, width="stretch")
    caption = f"{int(keep.sum())} of {len(emb.labels)} embeddings, {most} of {len(identities)} identities"
    if emb.model:
        caption += f", {emb.model}"
    st.caption(caption + ". Each point is a photo; photos of one dog should sit together. Hover a point for the photo.")
    if emb.paths is not None and "image" not in frame:
        st.info(f"Photos not found under {data_root}: set PETMATCH_DATA (or `-- --data DIR`) to see them on hover.")


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
