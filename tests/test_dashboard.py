"""The Streamlit dashboard, run headless with `AppTest` on tiny files made in tmp_path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from model_pkg.metrics import save_confusion, verification_metrics  # noqa: E402

DASHBOARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app", "dashboard.py")


def trainer_state(steps: int, best: float) -> dict:
    history = []
    for step in range(10, steps + 1, 10):
        history.append({"step": step, "epoch": step / 100, "loss": 1.0 / step, "learning_rate": 1e-3})
        history.append({"step": step, "eval_loss": 2.0 / step, "eval_roc_auc": 0.5 + step / (4 * steps)})
    return {"global_step": steps, "best_metric": best, "log_history": history}


@pytest.fixture
def project(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "runs" / "pair" / "checkpoint-20").mkdir(parents=True)
    (tmp_path / "runs" / "pair" / "checkpoint-20" / "trainer_state.json").write_text(json.dumps(trainer_state(20, 0.6)))
    (tmp_path / "runs" / "pair" / "trainer_state.json").write_text(json.dumps(trainer_state(50, 0.75)))
    (tmp_path / "runs" / "arcface").mkdir()
    (tmp_path / "runs" / "arcface" / "trainer_state.json").write_text(json.dumps(trainer_state(30, 0.9)))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "pair_3v3.json").write_text(json.dumps({"accuracy": 0.9, "roc_auc": 0.97, "model": "m"}))
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "table.json").write_text(
        json.dumps([{"model": "a", "auc": 0.8}, {"model": "b", "auc": 0.9}])
    )
    labels = np.array([1] * 50 + [0] * 50)
    scores = np.concatenate([rng.normal(1.0, 0.5, 50), rng.normal(0.0, 0.5, 50)])
    np.savez(tmp_path / "results" / "pair_scores.npz", labels=labels, scores=scores, threshold=0.5)
    save_confusion(np.array([[5, 1], [0, 4]]), ["Bella", "Max"], tmp_path / "results" / "gallery_confusion.csv")
    centres = rng.normal(size=(4, 8))
    np.savez(
        tmp_path / "results" / "embeddings.npz",
        embeddings=np.repeat(centres, 5, axis=0) + 0.01 * rng.normal(size=(20, 8)),
        labels=np.repeat(["a", "b", "c", "d"], 5),
    )
    return tmp_path, labels, scores


def run(root, monkeypatch) -> AppTest:
    monkeypatch.setenv("PETMATCH_DASHBOARD_ROOT", str(root))
    at = AppTest.from_file(DASHBOARD, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_dashboard_shows_every_section(project, monkeypatch):
    root, labels, scores = project
    at = run(root, monkeypatch)
    assert [t.label for t in at.tabs] == ["Training & evaluations", "ROC / PR", "Gallery confusion", "Embeddings"]
    assert [s.value for s in at.subheader][:2] == [
        "arcface  (runs/arcface/trainer_state.json)",
        "pair  (runs/pair/trainer_state.json)",
    ]
    runs, evaluations = at.dataframe[0].value, at.dataframe[1].value
    assert runs.loc["pair", "global_step"] == 50 and runs.loc["arcface", "best_metric"] == 0.9  # the latest state of each run
    assert evaluations.loc["results/pair_3v3.json", "roc_auc"] == 0.97 and "bench/results/table.json [1]" in evaluations.index
    # threshold slider: starts at the stored threshold; the metrics follow it
    metrics = {m.label: float(m.value) for m in at.metric}
    expected = verification_metrics(labels, scores, 0.5)
    assert at.slider[0].value == pytest.approx(0.5)
    for key in ("accuracy", "precision", "recall"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-3)
    at.slider[0].set_value(float(scores.max())).run()
    metrics = {m.label: float(m.value) for m in at.metric}
    assert metrics["recall"] == pytest.approx(verification_metrics(labels, scores, float(scores.max()))["recall"], abs=1e-3)
    assert metrics["identification accuracy"] == pytest.approx(0.9, abs=1e-3)  # the confusion matrix: 9 of 10 right
    assert any("20 of 20 embeddings, 4 of 4 identities" in c.value for c in at.caption)
    at.radio[0].set_value("t-SNE").run()
    assert not at.exception


def test_dashboard_on_an_empty_folder_says_what_it_looks_for(tmp_path, monkeypatch):
    at = run(tmp_path, monkeypatch)
    infos = " ".join(i.value for i in at.info)
    for needed in ("No training runs", "No evaluation JSONs", "No saved scores", "No gallery confusion", "No saved embeddings"):
        assert needed in infos


def test_bad_scores_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    np.savez(tmp_path / "results" / "x_scores.npz", scores=np.arange(4.0), other=np.zeros(4))
    at = run(tmp_path, monkeypatch)
    assert any("needs 'labels' and 'scores'" in e.value for e in at.error)
