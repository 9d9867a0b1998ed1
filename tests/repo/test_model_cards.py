"""The shipped models' cards are Hub-ready: license, library, pipeline tag, datasets, base model, and a model-index
whose results are the ones in bench/results (scripts/write_model_cards.py writes them)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from model_pkg import hub

REPO = Path(__file__).resolve().parents[2]
MODELS = ["arcface-embedder", "pair-matcher", "dual-encoder"]
PIPELINE_TAGS = {"arcface-embedder": "image-feature-extraction", "pair-matcher": "other", "dual-encoder": "feature-extraction"}


def writer():
    spec = importlib.util.spec_from_file_location("write_model_cards", REPO / "scripts" / "write_model_cards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", MODELS)
def test_shipped_card_has_the_hub_fields(name):
    card = ModelCard.load(REPO / "models" / name / "README.md")
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "petmatch"
    assert data.pipeline_tag == PIPELINE_TAGS[name]
    assert data.datasets and data.tags and "petmatch" in data.tags
    bases = [data.base_model] if isinstance(data.base_model, str) else data.base_model
    assert bases and all(b.count("/") == 1 for b in bases), bases
    assert data.model_name == name and data.eval_results
    for result in data.eval_results:
        assert result.task_type and result.dataset_type and result.dataset_split and result.metric_name
        assert isinstance(result.metric_value, float)
    assert "Measured results" in card.text and "## How to use" in card.text


def test_card_results_are_the_benchmark_results():
    import json

    w = writer()
    pets = json.loads((REPO / "bench" / "results" / "pets_quality_val.json").read_text())
    expected = {"arcface-embedder": w.embedder_results(pets), "pair-matcher": w.matcher_results(pets)}
    for name, rows in expected.items():
        got = ModelCard.load(REPO / "models" / name / "README.md").data.eval_results
        assert [(r.dataset_config, r.metric_name, r.metric_value) for r in got] == [
            (r["dataset_config"], r["metric_name"], r["metric_value"]) for r in rows
        ]
    dual = ModelCard.load(REPO / "models" / "dual-encoder" / "README.md").data.eval_results
    recalls = {r.metric_name: r.metric_value for r in dual}
    metrics = hub.read_model_card_metrics(REPO / "models" / "dual-encoder")
    assert recalls["text-to-image R@1"] == pytest.approx(metrics["dev_t2i_r1"], abs=0.01)
    assert recalls["text-to-image R@10"] == pytest.approx(metrics["dev_t2i_r10"], abs=0.01)


def test_rewriting_a_card_keeps_it(tmp_path):
    """rewrite_model_card reads the card back and writes the same text: nothing is lost, nothing drifts."""
    shutil.copy(REPO / "models" / "pair-matcher" / "README.md", tmp_path / "README.md")
    before = (tmp_path / "README.md").read_text()
    card = ModelCard.load(tmp_path / "README.md")
    results = [
        dict(
            task_type=r.task_type,
            task_name=r.task_name,
            dataset_type=r.dataset_type,
            dataset_name=r.dataset_name,
            dataset_config=r.dataset_config,
            dataset_split=r.dataset_split,
            metric_type=r.metric_type,
            metric_name=r.metric_name,
            metric_value=r.metric_value,
        )
        for r in card.data.eval_results
    ]
    assert hub.rewrite_model_card(tmp_path, eval_results=results) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
