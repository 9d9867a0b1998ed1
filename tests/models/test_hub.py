import json
import os

import numpy as np
import pytest
import yaml

from model_pkg import hub


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    block = text.split("---\n", 2)[1]
    return yaml.safe_load(block)


def make_model_folder(path, *, config=True, weights=True, card=True):
    path.mkdir(parents=True, exist_ok=True)
    if config:
        (path / "config.json").write_text(json.dumps({"model_type": "pair_matcher"}))
    if weights:
        (path / "model.safetensors").write_bytes(b"\x00" * 16)
    if card:
        hub.write_model_card(path, model_name="pm", model_type="pair_matcher", description="d")
    return path


class FakeApi:
    """Records calls instead of talking to the Hub."""

    instances: list = []

    def __init__(self, token=None, **kwargs):
        self.token = token
        self.calls = []
        FakeApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        kwargs_files = sorted(os.listdir(kwargs["folder_path"]))
        self.calls.append(("files", kwargs_files))
        return "commit-info"


@pytest.fixture
def fake_api(monkeypatch):
    FakeApi.instances = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_OFFLINE", False)
    return FakeApi


# --------------------------------------------------------------------------- #
# model card
# --------------------------------------------------------------------------- #
def test_write_model_card_front_matter_and_sections(tmp_path):
    text = hub.write_model_card(
        tmp_path / "m",
        model_name="petmatch-pair-v1",
        model_type="pair_matcher",
        description="Decides whether two photo sets show the same dog.",
        metrics={"accuracy": 0.91, "roc_auc": 0.97, "num_pairs": 200},
        data="Pairs built from a private dog photo collection.",
        intended_use="Reuniting lost pets with owners.",
        limitations="Not tested on puppies.",
        training={"epochs": 5, "lr": 1e-4},
        base_model="timm/efficientnet_lite0",
        usage="model = PairMatcher.from_pretrained('x')",
        tags=["dogs", "pair_matcher"],
    )
    path = tmp_path / "m" / "README.md"
    assert path.read_text(encoding="utf-8") == text
    fm = front_matter(text)
    assert fm["license"] == "apache-2.0"
    assert fm["library_name"] == "petmatch"
    assert fm["tags"] == ["petmatch", "pair_matcher", "dogs"]  # model_type included once
    assert fm["base_model"] == "timm/efficientnet_lite0"
    assert fm["petmatch_metrics"] == {"accuracy": 0.91, "roc_auc": 0.97, "num_pairs": 200}
    assert fm["petmatch_training"] == {"epochs": 5, "lr": 1e-4}
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Model description",
        "## Intended use",
        "## Training data",
        "## Training procedure",
        "## Evaluation",
        "## Limitations",
        "## How to use",
    ]
    assert "| accuracy | 0.9100 |" in text
    assert "| num_pairs | 200 |" in text
    assert "Reuniting lost pets" in text and "Not tested on puppies." in text
    assert "```python\nmodel = PairMatcher.from_pretrained('x')\n```" in text
    assert [p for p in os.listdir(tmp_path / "m")] == ["README.md"]  # no temp files left


def test_write_model_card_minimal_and_overwrite(tmp_path):
    (tmp_path / "README.md").write_text("old")
    text = hub.write_model_card(
        tmp_path, model_name="m", model_type="gallery_id", description="desc", license="mit", usage="```bash\npetmatch eval\n```"
    )
    fm = front_matter(text)
    assert fm["license"] == "mit"
    assert "base_model" not in fm and "petmatch_metrics" not in fm
    assert "No evaluation metrics were provided." in text
    assert "## Training procedure" not in text
    assert "```bash\npetmatch eval\n```" in text and "```python\n```bash" not in text
    assert (tmp_path / "README.md").read_text() == text
    assert hub.read_model_card_metrics(tmp_path) == {}
    with pytest.raises(ValueError, match="model_name"):
        hub.write_model_card(tmp_path, model_name=" ", model_type="x", description="d")


def test_metrics_round_trip_with_numpy_and_nesting(tmp_path):
    metrics = {
        "verification": {"accuracy": np.float64(0.875), "threshold_source": "given", "num_pairs": np.int64(40)},
        "retrieval": {"r1": 62.5, "map": np.float32(0.5)},
        "ks": (1, 5),
    }
    text = hub.write_model_card(tmp_path, model_name="m", model_type="text_search", description="d", metrics=metrics)
    assert "| verification.accuracy | 0.8750 |" in text
    assert "| retrieval.r1 | 62.5000 |" in text
    back = hub.read_model_card_metrics(tmp_path)
    assert back == {
        "verification": {"accuracy": 0.875, "threshold_source": "given", "num_pairs": 40},
        "retrieval": {"r1": 62.5, "map": 0.5},
        "ks": [1, 5],
    }
    assert type(back["verification"]["num_pairs"]) is int


def test_read_model_card_metrics_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="write_model_card"):
        hub.read_model_card_metrics(tmp_path)


# --------------------------------------------------------------------------- #
# push_folder_to_hub
# --------------------------------------------------------------------------- #
def test_push_checks_folder_before_any_network(tmp_path, fake_api):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as ei:
        hub.push_folder_to_hub(empty, "me/model")
    msg = str(ei.value)
    for needle in ("config.json", "model.safetensors", "README.md", "save_pretrained", "write_model_card"):
        assert needle in msg
    no_card = make_model_folder(tmp_path / "nocard", card=False)
    with pytest.raises(ValueError, match="README.md") as ei:
        hub.push_folder_to_hub(no_card, "me/model")
    assert "config.json" not in str(ei.value)
    with pytest.raises(ValueError, match="not a folder"):
        hub.push_folder_to_hub(tmp_path / "does-not-exist", "me/model")
    assert FakeApi.instances == []  # nothing constructed, no network


def test_push_sharded_weights(tmp_path, fake_api):
    folder = make_model_folder(tmp_path / "m", weights=False)
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
        hub.push_folder_to_hub(folder, "me/model")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\x00")
    hub.push_folder_to_hub(folder, "me/model")
    assert len(FakeApi.instances) == 1


def test_push_offline_raises_clear_error(tmp_path, fake_api, monkeypatch):
    folder = make_model_folder(tmp_path / "m")
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as ei:
        hub.push_folder_to_hub(folder, "me/model")
    msg = str(ei.value)
    assert "offline" in msg and "HF_HUB_OFFLINE" in msg and str(folder.resolve()) in msg
    assert FakeApi.instances == []


def test_push_uploads_right_folder_to_right_repo(tmp_path, fake_api):
    folder = make_model_folder(tmp_path / "m")
    url = hub.push_folder_to_hub(folder, "me/petmatch-pair", private=True, token="tok", commit_message="v1")
    assert url == "https://huggingface.co/me/petmatch-pair"
    (api,) = FakeApi.instances
    assert api.token == "tok"
    (c_name, c_repo, c_kw), (u_name, u_kw), (_, files) = api.calls
    assert (c_name, c_repo) == ("create_repo", "me/petmatch-pair")
    assert c_kw["exist_ok"] is True and c_kw["private"] is True
    assert u_name == "upload_folder"
    assert u_kw["repo_id"] == "me/petmatch-pair"
    assert os.path.samefile(u_kw["folder_path"], folder)
    assert u_kw["commit_message"] == "v1"
    assert files == ["README.md", "config.json", "model.safetensors"]


def test_push_invalid_repo_id(tmp_path, fake_api):
    folder = make_model_folder(tmp_path / "m")
    with pytest.raises(ValueError):
        hub.push_folder_to_hub(folder, "me/bad repo id!!")
    assert FakeApi.instances == []


def _hub_http_error():
    httpx2 = pytest.importorskip("httpx2")
    from huggingface_hub.errors import HfHubHTTPError

    resp = httpx2.Response(503, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    return HfHubHTTPError("503 Service Unavailable", response=resp)


@pytest.mark.parametrize("make_exc", [lambda: ConnectionError("no route to host"), _hub_http_error])
def test_push_network_error_becomes_runtime_error(tmp_path, fake_api, monkeypatch, make_exc):
    folder = make_model_folder(tmp_path / "m")
    exc = make_exc()

    def failing_upload(self, **kwargs):
        raise exc

    monkeypatch.setattr(FakeApi, "upload_folder", failing_upload)
    with pytest.raises(RuntimeError) as ei:
        hub.push_folder_to_hub(folder, "me/model")
    assert ei.value.__cause__ is exc
    msg = str(ei.value)
    assert str(folder.resolve()) in msg and "HF_HUB_OFFLINE" in msg and "run again" in msg
