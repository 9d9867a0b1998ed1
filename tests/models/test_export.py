"""ONNX export (`model_pkg.export`) and ONNX Runtime inference (`model_pkg.onnx_runtime`) on tiny models."""

from __future__ import annotations

import copy
import json
import shutil
import sys

import pytest
import torch

from model_pkg.arcface import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.dual_encoder import DualEncoderConfig, DualEncoderModel
from model_pkg.export import export_onnx, list_photos, photo_pixels, spread
from model_pkg.export.__main__ import main
from model_pkg.onnx_runtime import ExportError, OnnxTower, onnx_tower, tower_checksum

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY_VISION = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "feature_layer": "stage2"}
TINY_TEXT = {  # MiniLM's tokenizer (offline package) with a 2-layer, 32-wide BERT
    "tower": "transformers",
    "pretrained": False,
    "max_length": 16,
    "hf_config": {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    },
}
TINY = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "embedding_size": 16, "tta_flip": True}


def save_tiny_embedder(folder, seed: int = 0) -> None:
    torch.manual_seed(seed)
    ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**TINY)).eval().save_pretrained(folder)


@pytest.fixture(scope="module")
def dogs(dog_faces):
    return dog_faces


@pytest.fixture(scope="module")
def exported(tmp_path_factory, dogs):
    """A tiny flip-TTA embedder saved and exported (fp32) to `<folder>/onnx`."""
    folder = tmp_path_factory.mktemp("embedder")
    save_tiny_embedder(folder)
    return folder, export_onnx(folder, photos=dogs, check_photos=4)


@pytest.fixture(scope="module")
def photos(exported, dogs):
    """(7, 3, 32, 32) real photos of 7 dogs through the model's eval transform."""
    model = ArcFaceEmbedderModel.from_pretrained(exported[0], use_onnx=False)
    return photo_pixels(model.backbone, spread(list_photos(dogs), 7))


def count_calls(monkeypatch, runner: OnnxTower) -> list[int]:
    calls: list[int] = []
    original = runner.run
    monkeypatch.setattr(runner, "run", lambda *x: calls.append(len(x[0])) or original(*x))
    return calls


def test_export_writes_graph_and_manifest(exported):
    folder, manifest = exported
    assert (folder / "onnx" / "image.onnx").is_file()
    on_disk = json.loads((folder / "onnx" / "manifest.json").read_text())
    assert on_disk == manifest
    image = manifest["towers"]["image"]
    assert manifest["opset"] == 18 and image["file"] == "image.onnx" and image["precision"] == "fp32"
    assert image["input_size"] == [3, 32, 32] and image["layer"] is None and image["tta_flip"] is True
    assert image["check"]["photos"] == 4 and image["check"]["relative_error"] <= manifest["tolerance"] == 1e-4
    pytorch = ArcFaceEmbedderModel.from_pretrained(folder, use_onnx=False)
    assert image["source_checksum"] == tower_checksum(pytorch.backbone)
    assert str(folder) not in (folder / "onnx" / "manifest.json").read_text()  # no machine paths


def test_onnx_path_matches_pytorch_on_real_photos_at_any_batch(exported, photos, monkeypatch):
    folder, _ = exported
    pytorch = ArcFaceEmbedderModel.from_pretrained(folder, use_onnx=False).eval()
    model = ArcFaceEmbedderModel.from_pretrained(folder).eval()
    assert onnx_tower(pytorch.backbone) is None and onnx_tower(model.backbone) is not None
    assert model.state_dict().keys() == pytorch.state_dict().keys()  # the stand-in holds no weights
    calls = count_calls(monkeypatch, onnx_tower(model.backbone))
    with torch.no_grad():
        for batch in (photos[:1], photos):  # the graph's batch axis is dynamic
            onnx, reference = model.get_image_features(pixel_values=batch), pytorch.get_image_features(pixel_values=batch)
            assert onnx.shape == reference.shape
            torch.testing.assert_close(onnx, reference, atol=1e-5, rtol=1e-4)
    assert calls == [1, 7]  # ONNX Runtime computed both, flip TTA inside the graph
    clone = copy.deepcopy(model)  # a session does not pickle: the copy opens its own
    assert onnx_tower(clone.backbone) is not None and onnx_tower(clone.backbone) is not onnx_tower(model.backbone)
    with torch.no_grad():
        torch.testing.assert_close(clone.get_image_features(pixel_values=photos), onnx)


def test_pytorch_fallback_without_onnxruntime(exported, photos, monkeypatch):
    folder, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    model = ArcFaceEmbedderModel.from_pretrained(folder).eval()
    assert onnx_tower(model.backbone) is None
    monkeypatch.undo()
    pytorch = ArcFaceEmbedderModel.from_pretrained(folder, use_onnx=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixel_values=photos), pytorch.get_image_features(pixel_values=photos))


def test_stale_export_is_ignored_with_a_warning(exported, tmp_path, photos):
    folder, _ = exported
    model = ArcFaceEmbedderModel.from_pretrained(folder, use_onnx=False)
    with torch.no_grad():
        model.backbone.model.conv_stem.weight.mul_(1.1)  # fine-tuned after the export
    model.save_pretrained(tmp_path)
    shutil.copytree(folder / "onnx", tmp_path / "onnx")
    with pytest.warns(UserWarning, match="stale ONNX export of the image tower"):
        reloaded = ArcFaceEmbedderModel.from_pretrained(tmp_path).eval()
    assert onnx_tower(reloaded.backbone) is None
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.get_image_features(pixel_values=photos), model.eval().get_image_features(pixel_values=photos)
        )


def test_gradients_training_and_other_settings_run_on_pytorch(exported, photos, monkeypatch):
    folder, _ = exported
    model = ArcFaceEmbedderModel.from_pretrained(folder).eval()
    runner = onnx_tower(model.backbone)
    assert runner is not None
    calls = count_calls(monkeypatch, runner)
    model.get_image_features(pixel_values=photos).sum().backward()  # gradients on: PyTorch
    assert calls == [] and model.backbone.model.conv_stem.weight.grad is not None
    model.set_tta_flip(False)  # the graph holds flip TTA: without it the backbone runs on PyTorch
    pytorch = ArcFaceEmbedderModel.from_pretrained(folder, use_onnx=False).eval()
    pytorch.set_tta_flip(False)
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixel_values=photos), pytorch.get_image_features(pixel_values=photos))
        assert calls == []
        model.set_tta_flip(True)
        model.get_image_features(pixel_values=photos)
        assert calls == [7]
    model.train()  # training may change the weights: the session is dropped for good
    model.eval()
    assert onnx_tower(model.backbone) is None
    assert runner.retired and runner.session is None


def test_int8_export_is_used_and_follows_pytorch(exported, photos, dogs, tmp_path):
    folder, _ = exported
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("onnx"))
    manifest = export_onnx(tmp_path, photos=dogs, check_photos=4, int8=True, calibration_photos=40)  # 3 batches
    image = manifest["towers"]["image"]
    assert image["file"] == "image.int8.onnx" and image["fp32_file"] == "image.onnx" and image["precision"] == "int8"
    assert image["calibration"]["photos"] == 40 and image["calibration"]["split"] == "all photos"
    model = ArcFaceEmbedderModel.from_pretrained(tmp_path).eval()
    assert onnx_tower(model.backbone) is not None and onnx_tower(model.backbone).path.endswith("image.int8.onnx")
    pytorch = ArcFaceEmbedderModel.from_pretrained(tmp_path, use_onnx=False).eval()
    with torch.no_grad():
        int8, reference = model.get_image_features(pixel_values=photos), pytorch.get_image_features(pixel_values=photos)
    assert not torch.equal(int8, reference)  # really quantised
    assert float((int8 * reference).sum(-1).mean()) > 0.8  # and still the same embedding


def test_models_with_the_same_export_share_one_session(exported, photos, dogs, tmp_path):
    """The shipped pair matcher and embedder carry the same backbone export: one session (and arena) for both."""
    folder, _ = exported
    shutil.copytree(folder, tmp_path / "copy")
    first = ArcFaceEmbedderModel.from_pretrained(folder).eval()
    second = ArcFaceEmbedderModel.from_pretrained(tmp_path / "copy").eval()
    assert onnx_tower(first.backbone) is not onnx_tower(second.backbone)  # each module its own tower ...
    assert onnx_tower(first.backbone).session is onnx_tower(second.backbone).session  # ... on one session
    with torch.no_grad():
        torch.testing.assert_close(first.get_image_features(pixel_values=photos), second.get_image_features(pixel_values=photos))
    other = tmp_path / "other"  # other weights, so another graph: never the same session
    save_tiny_embedder(other, seed=1)
    export_onnx(other, photos=dogs, check_photos=2)
    third = ArcFaceEmbedderModel.from_pretrained(other).eval()
    assert onnx_tower(third.backbone) is not None and onnx_tower(third.backbone).session is not onnx_tower(first.backbone).session
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # other thread settings: another session
    try:
        fourth = ArcFaceEmbedderModel.from_pretrained(folder).eval()
    finally:
        torch.set_num_threads(threads)
    assert onnx_tower(fourth.backbone).session is not onnx_tower(first.backbone).session


def test_dual_encoder_text_and_image_towers(tmp_path, dogs, monkeypatch):
    torch.manual_seed(0)
    config = DualEncoderConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, projection_dim=16)
    DualEncoderModel(config).eval().save_pretrained(tmp_path)
    manifest = export_onnx(tmp_path, photos=dogs, check_photos=4)
    assert sorted(manifest["towers"]) == ["image", "text"]
    assert manifest["towers"]["image"]["layer"] == "stage2" and manifest["towers"]["text"]["check"]["relative_error"] <= 1e-4
    model = DualEncoderModel.from_pretrained(tmp_path).eval()
    pytorch = DualEncoderModel.from_pretrained(tmp_path, use_onnx=False).eval()
    assert onnx_tower(model.text_model) is not None and onnx_tower(model.vision_model.backbone) is not None
    calls = count_calls(monkeypatch, onnx_tower(model.text_model))
    texts = ["a dog", "two brown dogs play with a red ball in the park", "chien"]
    torch.testing.assert_close(model.encode_text(texts), pytorch.encode_text(texts), atol=1e-5, rtol=1e-4)
    assert model.encode_text(texts[:1]).shape == (1, 16) and calls == [3, 1]  # any batch, any length
    pixels = photo_pixels(model.vision_model.backbone, spread(list_photos(dogs), 3))
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixels), pytorch.get_image_features(pixels), atol=1e-5, rtol=1e-4)


def test_cli_explains_bad_input(tmp_path, exported, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["onnx", "--model", str(tmp_path)])
    assert exit_info.value.code == 2 and "no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["onnx", "--model", str(exported[0]), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "--photos" in capsys.readouterr().err
    with pytest.raises(ExportError, match="no tower"):
        export_onnx(exported[0], towers=["text"])
