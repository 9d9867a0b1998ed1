"""The Streamlit dashboard, run headless with `AppTest`: every tab draws its charts from the files the repository
ships (a copy of bench/results, as in a fresh clone), and says what it looks for when files are missing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import dashboard_data as data  # noqa: E402
from model_pkg.metrics import save_confusion, verification_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = str(REPO / "app" / "dashboard.py")
EMBEDDINGS = REPO / "bench" / "results" / "embeddings" / "arcface_embedder_test.npz"


@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory) -> Path:
    """What a fresh clone has: bench/results and the shipped models' configs, no runs/ and no results/."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(REPO / "bench" / "results", root / "bench" / "results")
    for model in ("pair-matcher", "arcface-embedder"):  # their stored thresholds
        (root / "models" / model).mkdir(parents=True)
        shutil.copy(REPO / "models" / model / "config.json", root / "models" / model)
    return root


def run(root: Path, monkeypatch, data_root: Path | None = None, assets: Path | None = None) -> AppTest:
    monkeypatch.setenv("PETMATCH_DASHBOARD_ROOT", str(root))
    monkeypatch.setenv("PETMATCH_DATA", str(data_root or root / "no-photos"))
    monkeypatch.setenv("PETMATCH_ASSETS_DIR", str(assets or root / "no-assets"))
    at = AppTest.from_file(DASHBOARD, default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def tab(at: AppTest, name: str):
    return next(t for t in at.tabs if t.label == name)


def charts(node) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """The Vega-Lite charts under `node`: (spec, {dataset name: frame})."""
    out = []
    for chart in node.get("vega_lite_chart") if hasattr(node, "get") else []:
        frames = {d.name: convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets}
        out.append((json.loads(chart.proto.spec), frames))
    return out


def marks(spec: dict) -> list[str]:
    return [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec.get("layer", [spec])]


@pytest.fixture(scope="module")
def shipped_app(shipped_root):
    mp = pytest.MonkeyPatch()
    try:
        yield run(shipped_root, mp)
    finally:
        mp.undo()


def test_tabs_in_order(shipped_app):
    assert [t.label for t in shipped_app.tabs] == list(data.TABS)


def test_overview_bars_with_goals_and_a_small_table_per_task(shipped_app):
    overview = tab(shipped_app, "Overview")
    assert [s.value for s in overview.subheader] == ["Set vs set", "Gallery", "Every kind of photo", "Text search"]
    drawn = charts(overview)
    # accuracy, ROC-AUC | rank-1, rank-5, AUROC | per kind: rank-1, AUROC, 1v1 ROC-AUC, 1v1 accuracy | R@1, R@5, R@10, i2t R@1
    assert len(drawn) == 2 + 3 + 4 + 4
    spec, frames = drawn[0]
    assert spec["title"] == "accuracy %" and marks(spec) == ["bar", "text", "tick"]
    bars, goals = (frames[layer["data"]["name"]] for layer in (spec["layer"][0], spec["layer"][2]))
    assert set(bars["model"]) == {data.BASELINE, data.SHIPPED} and len(bars) == 8  # 4 protocols x 2 models
    shipped_rows = json.loads((REPO / "bench" / "results" / "pair_quality.json").read_text())
    shipped_1v1 = next(
        r for r in shipped_rows if r["model"] == "models/pair-matcher" and r["set_size"] == "1v1" and r["negatives"] == "random"
    )
    got = bars[(bars.model == data.SHIPPED) & (bars.protocol == "1v1 random")]["value"].item()
    assert got == pytest.approx(100 * shipped_1v1["accuracy"])
    assert goals[(goals.protocol == "1v1 random") & (goals.kind == "target")]["value"].item() == 97.5  # issue 12
    tables = [t.value for t in overview.dataframe]
    assert len(tables) == 4
    shown = tables[0].set_index(["protocol", "metric"])
    assert list(shown.columns)[:3] == [data.BASELINE, data.SHIPPED, "change"]
    scores, goals = data.overview(REPO), data.overview_goals(data.overview(REPO))
    row = data.overview_table(scores, goals, "set vs set").set_index(["protocol", "metric"]).loc[("1v1 hard", "accuracy %")]
    assert row["goal (must)"] == pytest.approx(row[data.BASELINE] + 3.0)  # +3 points over the baseline
    assert row["must met"] == ("yes" if row[data.SHIPPED] >= row["goal (must)"] else "no")
    assert shown.loc[("1v1 hard", "accuracy %"), data.SHIPPED] == f"{row[data.SHIPPED]:.1f}"  # percent: 1 decimal
    assert shown.loc[("1v1 hard", "ROC-AUC"), "goal (target)"] == ""  # no target set: blank, not "None"


def test_evaluations_grouped_by_kind_each_with_its_own_columns(shipped_app):
    evaluations = tab(shipped_app, "Evaluations")
    titles = [e.label for e in evaluations.expander]
    assert titles[0].startswith("Set vs set: pair quality") and titles[1].startswith("Gallery identification")
    tables = [t.value for t in evaluations.dataframe]
    assert len(tables) == len(titles)
    pair_table = tables[0]
    assert {"model", "set_size", "negatives", "accuracy", "roc_auc"} <= set(pair_table.columns)
    assert not {"threads", "clients", "photos_per_side", "rank1"} & set(pair_table.columns)  # another kind's columns
    assert len(pair_table.columns) <= 13 and pair_table["file"].str.startswith("bench/results/pair_quality").all()
    shipped_app.toggle[0].set_value(True).run()  # "All columns": more columns, still none of other kinds
    wide = tab(shipped_app, "Evaluations").dataframe[0].value
    assert len(wide.columns) >= len(pair_table.columns) and "clients" not in wide.columns


def test_learning_curves_of_the_shipped_runs(shipped_app):
    training = tab(shipped_app, "Training curves")
    assert [s.value for s in training.subheader][:5] == [
        "arcface-cpu  (bench/results/runs/arcface-cpu/trainer_state.json)",
        "arcface-gpu  (bench/results/runs/arcface-gpu/trainer_state.json)",  # train/arcface_gpu.py's run.json, as HF's state
        "dual-encoder  (bench/results/runs/dual-encoder/trainer_state.json)",
        "dual-image-gpu  (bench/results/runs/dual-image-gpu/trainer_state.json)",
        "dual-tuned  (bench/results/runs/dual-tuned/trainer_state.json)",  # the text side retrained on the tuned tower
    ]
    drawn = charts(training)
    titles = [spec["layer"][0].get("title") or spec.get("title") for spec, _ in drawn]
    assert titles.count("loss") == 5 and "validation metrics (percent)" in titles
    spec, frames = drawn[titles.index("validation metrics (percent)")]
    curve = frames[spec["layer"][0]["data"]["name"]]
    assert {"recall_at_1", "recall_at_5"} <= set(curve["series"])  # the ArcFace run's one-shot rank-1
    assert curve[curve.series == "recall_at_1"]["step"].min() == 0
    runs = training.dataframe[0].value
    assert runs.loc["arcface-cpu", "steps"] == 3600 and runs.loc["dual-encoder", "best step"] == 210
    assert runs.loc["arcface-gpu", "best step"] == 1151 and runs.loc["dual-tuned", "best step"] == 300


def test_roc_pr_with_the_stored_threshold_and_a_slider(shipped_app, shipped_root):
    roc = tab(shipped_app, "ROC / PR")
    assert roc.selectbox[0].options == ["1v1 hard", "1v1 random", "3v3 hard", "3v3 random"]
    assert roc.radio[0].options == ["shipped pair matcher", "untrained baseline (ImageNet cosine)"]
    config = json.loads((REPO / "models" / "pair-matcher" / "config.json").read_text())
    stored = config["set_size_thresholds"]["1"]
    assert roc.slider[0].value == pytest.approx(stored, abs=1e-6)  # starts at the model's stored 1v1 threshold
    with np.load(shipped_root / "bench" / "results" / "scores" / "pair_scores_pair_matcher_1v1_hard.npz") as f:
        labels, scores = f["labels"].astype(int), f["scores"].astype(float)
    shown = {m.label: float(m.value) for m in roc.metric}
    expected = verification_metrics(labels, scores, stored)
    for key in ("accuracy", "precision", "recall", "f1"):
        assert shown[key] == pytest.approx(expected[key], abs=1e-3)
    drawn = charts(roc)
    assert [spec["title"] for spec, _ in drawn] == ["ROC", "precision-recall", "scores of same-dog and different-dog pairs"]
    spec, frames = drawn[0]
    lines, points = (frames[layer["data"]["name"]] for layer in spec["layer"])
    assert lines["model"].nunique() == 2  # the shipped matcher and the baseline on the same pairs
    assert set(points["what"]) == {"slider", "stored threshold"}

    high = float(np.quantile(scores, 0.9))
    shipped_app.slider[0].set_value(high).run()
    shown = {m.label: float(m.value) for m in tab(shipped_app, "ROC / PR").metric}
    assert shown["recall"] == pytest.approx(verification_metrics(labels, scores, high)["recall"], abs=1e-3)
    assert shown["recall"] < expected["recall"]


def test_confusion_heatmap_and_most_confused_dogs(shipped_app):
    confusion = tab(shipped_app, "Gallery confusion")
    assert "arcface" in confusion.selectbox[0].value
    ((spec, frames),) = charts(confusion)
    assert spec["mark"]["type"] == "rect"
    cells = next(iter(frames.values()))
    assert {"true", "decided", "count"} <= set(cells.columns) and (cells["count"] > 0).all()
    assert "mistake" in set(cells["kind"])
    pairs = data.confusion_pairs(data.load_confusion(REPO / "bench" / "results" / "gallery_arcface_confusion.csv"))
    text = " ".join(m.value for m in confusion.markdown)
    a, b = pairs.iloc[0][["dog a", "dog b"]]
    assert f"**dog {a} and dog {b}**" in text and "similarity of their closest photos" in text
    threshold = json.loads((REPO / "models" / "arcface-embedder" / "config.json").read_text())["score_threshold"]
    assert any(f"from a similarity of {threshold:.3f}" in c.value for c in confusion.caption)
    # no photos anywhere (PETMATCH_DATA and the demo assets point at empty folders): said plainly
    assert any("Photos not found under" in i.value for i in confusion.info)


def test_embedding_map(shipped_app):
    emb = tab(shipped_app, "Embeddings")
    assert emb.selectbox[0].value == "bench/results/embeddings/arcface_embedder_test.npz"
    ((spec, frames),) = charts(emb)
    points = next(iter(frames.values()))
    assert len(points) > 40 and points["dog"].nunique() == 15
    assert any("15 of 178 identities" in c.value for c in emb.caption)
    assert any("Photos not found" in i.value for i in emb.info)
    assert emb.radio[0].value == "t-SNE"
    emb.radio[0].set_value("PCA").run()
    ((spec, frames),) = charts(tab(shipped_app, "Embeddings"))
    assert spec["encoding"]["x"]["title"] == "PCA 1" and len(next(iter(frames.values()))) == len(points)


def test_shipped_embeddings_are_small_and_portable():
    assert EMBEDDINGS.stat().st_size < 1.5e6
    emb = data.load_embeddings(EMBEDDINGS)
    assert emb.vectors.shape[1] == 512 and len(np.unique(emb.labels)) == 178
    assert all(p.startswith("dogfacenet/") and p.split("/")[1] == lab for p, lab in zip(emb.paths, emb.labels))
    splits = json.loads((REPO / "train" / "splits" / "dogfacenet.json").read_text())
    assert set(emb.labels) == set(splits["test"])  # dogs never trained on
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=2e-3)


def test_dataset_scale_photos_on_hover_and_beside_each_other(shipped_root, shared_data, monkeypatch):
    """Dataset-scale: the shipped embedding map and confusion pairs show the photos of the held-out dogs they plot,
    read from the full DogFaceNet (the demo photos, `test_demo_photos_fill_in_without_the_data_folder`, cover a few)."""
    at = run(shipped_root, monkeypatch, data_root=shared_data)
    ((spec, frames),) = charts(tab(at, "Embeddings"))
    points = next(iter(frames.values()))
    assert spec["encoding"]["tooltip"][0]["field"] == "image"  # vega-tooltip shows the "image" field as a picture
    assert points["image"].str.startswith("data:image/jpeg;base64,").all()
    shown = tab(at, "Gallery confusion").get("image")
    matrix = data.load_confusion(shipped_root / "bench" / "results" / "gallery_arcface_confusion.csv")
    pairs = min(len(data.confusion_pairs(matrix)), 6)  # the slider's default: up to six pairs
    assert pairs >= 1 and len(shown) == 2 * pairs + 1  # each pair's photos side by side, and the PNG of `evaluate gallery`
    assert not any("Photos not found" in i.value for i in at.info)


def test_demo_photos_fill_in_without_the_data_folder(tmp_path):
    assets = tmp_path / "assets"
    (assets / "demo_photos" / "gallery" / "64").mkdir(parents=True)
    (assets / "demo_photos" / "gallery" / "64" / "64.0.jpg").write_bytes(b"jpeg")
    assert data.find_photo("dogfacenet/64/64.0.jpg", tmp_path / "nothing", assets) == assets / "demo_photos/gallery/64/64.0.jpg"
    assert data.find_photo("dogfacenet/64/64.9.jpg", tmp_path / "nothing", assets) is None


def test_confused_pairs_count_both_directions_and_skip_rejections():
    labels = ["a", "b", "c", "unknown", "reshoot"]
    matrix = pd.DataFrame(
        [[5, 2, 0, 1, 0], [1, 4, 0, 0, 0], [0, 0, 3, 0, 2], [0, 0, 1, 7, 0], [0, 0, 0, 0, 0]], index=labels, columns=labels
    )
    pairs = data.confusion_pairs(matrix)
    assert pairs.to_dict("records") == [{"dog a": "a", "dog b": "b", "a taken for b": 2, "b taken for a": 1, "mistakes": 3}]


def test_relative_goals_follow_the_baseline():
    scores = pd.DataFrame(
        [
            {"task": "set vs set", "protocol": "3v3 random", "metric": "accuracy %", "model": data.BASELINE, "value": 99.0},
            {"task": "set vs set", "protocol": "1v1 hard", "metric": "ROC-AUC", "model": data.BASELINE, "value": 0.8},
        ]
    )
    goals = data.overview_goals(scores).set_index(["protocol", "metric", "kind"])["value"]
    assert goals[("3v3 random", "accuracy %", "must")] == pytest.approx(99.5)  # half the errors: +3 would pass 100%
    assert goals[("3v3 random", "accuracy %", "target")] == 99.5
    assert goals[("1v1 hard", "ROC-AUC", "must")] == pytest.approx(0.82)


@pytest.fixture
def tiny_project(tmp_path):
    """Hand-made files in the formats the dashboard reads, for the parts the shipped files cannot vary."""
    rng = np.random.default_rng(0)
    (tmp_path / "runs" / "pair" / "checkpoint-20").mkdir(parents=True)
    history = [{"step": s, "loss": 1.0 / s} for s in (10, 20)] + [{"step": 20, "eval_roc_auc": 0.8}]
    (tmp_path / "runs" / "pair" / "trainer_state.json").write_text(json.dumps({"global_step": 20, "log_history": history}))
    (tmp_path / "results").mkdir()
    labels = np.array([1] * 30 + [0] * 30)
    scores = np.concatenate([rng.normal(1.0, 0.5, 30), rng.normal(0.0, 0.5, 30)])
    np.savez(tmp_path / "results" / "my_scores.npz", labels=labels, scores=scores, threshold=0.25)
    save_confusion(np.array([[5, 1], [0, 4]]), ["Bella", "Max"], tmp_path / "results" / "gallery_confusion.csv")
    return tmp_path, labels, scores


def test_files_of_other_names_still_show(tiny_project, monkeypatch):
    root, labels, scores = tiny_project
    at = run(root, monkeypatch)
    assert tab(at, "Training curves").subheader[0].value == "pair  (runs/pair/trainer_state.json)"
    roc = tab(at, "ROC / PR")
    assert roc.selectbox[0].options == ["results/my_scores.npz"]
    assert roc.slider[0].value == pytest.approx(0.25)  # the threshold saved with the scores
    shown = {m.label: float(m.value) for m in roc.metric}
    assert shown["accuracy"] == pytest.approx(verification_metrics(labels, scores, 0.25)["accuracy"], abs=1e-3)
    assert "dog Bella and dog Max" in " ".join(m.value for m in tab(at, "Gallery confusion").markdown)


def test_an_empty_folder_says_what_it_looks_for(tmp_path, monkeypatch):
    at = run(tmp_path, monkeypatch)
    infos = " ".join(i.value for i in at.info)
    for needed in (
        "No set vs set results",
        "No gallery results",
        "No text search results",
        "No evaluation JSONs",
        "No training runs",
        "No saved scores",
        "No gallery confusion",
        "No saved embeddings",
    ):
        assert needed in infos


def test_a_bad_scores_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    np.savez(tmp_path / "results" / "x_scores.npz", scores=np.arange(4.0), labels_missing=np.zeros(4))
    (tmp_path / "results" / "y_scores.csv").write_text("score\n0.1\n")
    at = run(tmp_path, monkeypatch)
    assert any("needs 'labels' and 'scores' arrays" in e.value for e in at.error)


def test_the_dashboard_space_requirements_are_project_pins():
    pins = dict(line.split("==") for line in (REPO / "requirements-runtime.txt").read_text().split())
    space = (REPO / "spaces" / "dashboard" / "requirements.txt").read_text().split()
    assert space and all(pins.get(name) == version for name, version in (line.split("==") for line in space))
    assert {"streamlit", "altair", "scikit-learn", "pillow"} <= {line.split("==")[0] for line in space}
    assert os.path.isfile(REPO / "spaces" / "dashboard" / "README.md")
