"""The dashboard's Evaluations tab draws each group's numbers: `chart_frame` picks what is measured, and the page
shows one chart per group above its table (AppTest, on a copy of the shipped bench/results)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import dashboard_data as data  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_chart_frame_draws_measures_not_settings():
    table = pd.DataFrame(
        {
            "file": ["bench/results/a.json", "bench/results/b.json", "bench/results/b.json"],
            "model": ["imagenet", "shipped", "shipped"],
            "set_size": [1, 1, 3],
            "accuracy": [0.9, 0.95, 0.97],
            "roc_auc": [0.96, 0.99, None],
            "threshold": [0.5, 0.7, 0.7],
            "num_pairs": [1000, 1000, 1000],
            "seconds": [1.0, 2.0, 3.0],
        }
    )
    frame = data.chart_frame(table)
    assert list(frame.columns) == ["row", "metric", "value"]
    assert set(frame.metric) == {"accuracy", "roc_auc"}  # thresholds, counts and timings stay in the table
    assert list(frame[frame.metric == "accuracy"].row) == ["imagenet · 1", "shipped · 1", "shipped · 3"]
    assert len(frame) == 5  # the missing roc_auc is not drawn as zero
    assert data.chart_frame(table[["file", "model", "threshold"]]).empty


def test_every_tab_draws_and_evaluations_draws_a_chart_per_group(tmp_path, monkeypatch):
    shutil.copytree(REPO / "bench" / "results", tmp_path / "bench" / "results")
    monkeypatch.setenv("PETMATCH_DASHBOARD_ROOT", str(tmp_path))
    monkeypatch.setenv("PETMATCH_DATA", str(tmp_path / "no-photos"))
    monkeypatch.setenv("PETMATCH_ASSETS_DIR", str(tmp_path / "no-assets"))
    at = AppTest.from_file(str(REPO / "app" / "dashboard.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    undrawn = [t.label for t in at.tabs if not t.get("vega_lite_chart")]
    assert not undrawn, f"tabs without a chart on the shipped results: {undrawn}"
    evaluations = next(t for t in at.tabs if t.label == "Evaluations")
    groups = data.evaluation_groups(tmp_path)
    drawn = [g for g in groups if not data.chart_frame(g[1]).empty]
    assert len(drawn) >= 10
    charts = evaluations.get("vega_lite_chart")
    assert len(charts) == len(drawn)
    spec = json.loads(charts[0].proto.spec)
    assert spec["facet"]["column"]["field"] == "metric"
    (frame,) = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in charts[0].proto.datasets]
    title, table = drawn[0]
    assert title.startswith("Set vs set")
    first = table.iloc[0]
    drawn_accuracy = frame[(frame.metric == "accuracy")].value.iloc[0]
    assert drawn_accuracy == pytest.approx(first["accuracy"])
