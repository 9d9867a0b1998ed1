"""petmatch dashboard: what training and evaluation wrote, in one place (Streamlit).

    streamlit run app/dashboard.py                    # reads runs/, results/, bench/results/ of the repository
    streamlit run app/dashboard.py -- --root DIR      # or PETMATCH_DASHBOARD_ROOT=DIR

Tabs: loss and metric curves per training run and a side-by-side table of runs and evaluations; ROC and PR
curves of saved scores with a threshold slider (accuracy / precision / recall / F1 at that threshold); the
gallery confusion matrix; a 2-D projection (PCA or t-SNE) of saved embeddings coloured by identity.
What files are read and their formats: `app/dashboard_data.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app import dashboard_data as data  # noqa: E402
from model_pkg.metrics import choose_threshold, roc_pr_curves, verification_metrics  # noqa: E402


def parse_root() -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(data.default_root()))
    args, _ = parser.parse_known_args(sys.argv[1:])  # `streamlit run app/dashboard.py -- --root DIR`
    return Path(args.root)


def label(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def training_tab(root: Path) -> None:
    runs = data.find_runs(root)
    if not runs:
        st.info(f"No training runs under {root / 'runs'} (looked for runs/<run>/**/trainer_state.json).")
    else:
        names = st.multiselect("Runs", list(runs), default=list(runs))
        for name in names:
            history = data.run_history(runs[name])
            numeric = [c for c in history.columns if pd.api.types.is_numeric_dtype(history[c]) and c != "epoch"]
            st.subheader(f"{name}  ({label(runs[name], root)})")
            losses = [c for c in numeric if "loss" in c]
            others = [c for c in numeric if c not in losses and c not in ("learning_rate", "grad_norm")]
            if losses:
                st.caption("loss")
                st.line_chart(history[losses])
            if others:
                st.caption("metrics")
                st.line_chart(history[others])
        st.subheader("Runs side by side")
        st.dataframe(data.runs_table({n: runs[n] for n in names}))
    st.subheader("Evaluations side by side")
    table = data.evaluation_table(root)
    if table.empty:
        st.info(f"No evaluation JSONs in {', '.join(str(root / d) for d in data.RESULT_DIRS)}.")
    else:
        st.dataframe(table)


def roc_tab(root: Path) -> None:
    files = data.find_files(root, data.SCORE_DIRS, "*.npz", ("scores",)) + data.find_files(root, data.SCORE_DIRS, "*scores*.csv")
    if not files:
        st.info("No saved scores: an .npz with 'labels' and 'scores' arrays, or a *scores*.csv with 'label' and 'score'.")
        return
    choice = st.selectbox("Scores", [label(f, root) for f in files])
    try:
        labels, scores, stored = data.load_scores(root / choice)
        curves = roc_pr_curves(labels, scores)
    except ValueError as err:
        st.error(f"Cannot read {choice}: {err}")
        return
    default = stored if stored is not None else choose_threshold(labels, scores)
    lo, hi = float(scores.min()), float(scores.max())
    threshold = st.slider(
        "Threshold", min_value=lo, max_value=hi, value=float(np.clip(default, lo, hi)), step=max((hi - lo) / 200, 1e-6)
    )
    m = verification_metrics(labels, scores, threshold)
    cols = st.columns(4)
    for col, key in zip(cols, ("accuracy", "precision", "recall", "f1")):
        col.metric(key, f"{m[key]:.3f}")
    st.caption(
        f"ROC-AUC {m['roc_auc']:.4f}, PR-AUC {m['pr_auc']:.4f}, {m['num_positive']} positive / "
        f"{m['num_negative']} negative pairs; default threshold: {'stored' if stored is not None else 'best accuracy'}"
    )
    left, right = st.columns(2)
    with left:
        st.caption("ROC")
        st.line_chart(
            pd.DataFrame({"false positive rate": curves["fpr"], "true positive rate": curves["tpr"]}),
            x="false positive rate",
            y="true positive rate",
        )
    with right:
        st.caption("precision-recall")
        st.line_chart(pd.DataFrame({"recall": curves["recall"], "precision": curves["precision"]}), x="recall", y="precision")


def confusion_tab(root: Path) -> None:
    files = data.find_files(root, data.SCORE_DIRS, "*confusion*.csv")
    if not files:
        st.info("No gallery confusion matrix (a *confusion*.csv written by model_pkg.metrics.save_confusion).")
        return
    choice = st.selectbox("Confusion matrix", [label(f, root) for f in files])
    matrix = data.load_confusion(root / choice)
    diagonal = np.diag(matrix.to_numpy()) if matrix.shape[0] == matrix.shape[1] else None
    if diagonal is not None:
        st.metric("identification accuracy", f"{diagonal.sum() / max(matrix.to_numpy().sum(), 1):.3f}")
    st.dataframe(matrix.style.background_gradient(cmap="Blues", axis=None))


def embeddings_tab(root: Path) -> None:
    files = data.find_files(root, data.SCORE_DIRS, "*.npz", ("embeddings", "features"))
    if not files:
        st.info("No saved embeddings: an .npz with 'embeddings' (or 'features') and 'labels' (or 'paths').")
        return
    choice = st.selectbox("Embeddings", [label(f, root) for f in files])
    method = st.radio("Projection", ["PCA", "t-SNE"], horizontal=True)
    try:
        vectors, labels = data.load_embeddings(root / choice)
    except ValueError as err:
        st.error(f"Cannot read {choice}: {err}")
        return
    identities, counts = np.unique(labels, return_counts=True)
    most = st.slider("Identities shown (most photos first)", 1, len(identities), min(len(identities), 15))
    keep = np.isin(labels, identities[np.argsort(-counts, kind="stable")[:most]])
    points = data.project_2d(vectors[keep], method)
    st.scatter_chart(
        pd.DataFrame({"x": points[:, 0], "y": points[:, 1], "identity": labels[keep]}), x="x", y="y", color="identity"
    )
    st.caption(f"{int(keep.sum())} of {len(labels)} embeddings, {most} of {len(identities)} identities")


def main() -> None:
    st.set_page_config(page_title="petmatch dashboard", layout="wide")
    root = parse_root()
    st.title("petmatch dashboard")
    st.caption(f"Reading {root}")
    tabs = st.tabs(["Training & evaluations", "ROC / PR", "Gallery confusion", "Embeddings"])
    for tab, show in zip(tabs, (training_tab, roc_tab, confusion_tab, embeddings_tab)):
        with tab:
            show(root)


main()
