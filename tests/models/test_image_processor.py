"""Each shipped image model carries its image processor: `AutoImageProcessor.from_pretrained(model_dir)` prepares a
photo as the model's own eval transform does, and transformers' "image-feature-extraction" pipeline returns the
embedder's embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model_pkg
from model_pkg.hub import image_processor_settings, save_image_processor
from model_pkg.transforms import create_transform

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
PHOTO = REPO / "tests" / "photos" / "cat_faces" / "birba" / "1.jpg"  # 256 x 256: the processor has to resize it


@pytest.fixture(scope="module")
def embedder():
    from transformers import AutoModel

    model_pkg.register_auto_classes()
    return AutoModel.from_pretrained(MODELS / "arcface-embedder").eval()


@pytest.mark.parametrize("name", ["arcface-embedder", "pair-matcher", "dual-encoder"])
def test_shipped_processor_is_the_backbone_eval_transform(name):
    import json

    import timm
    from transformers import AutoImageProcessor

    config = json.loads((MODELS / name / "config.json").read_text())
    vision = config.get("vision_config", config)
    data_config = timm.data.resolve_data_config({}, model=timm.create_model(vision["backbone"], pretrained=False))
    data_config["input_size"] = (3, vision["image_size"], vision["image_size"])
    processor = AutoImageProcessor.from_pretrained(MODELS / name)
    expected = image_processor_settings(data_config)
    assert processor.size == expected["size"] and processor.resample == expected["resample"]
    assert list(processor.image_mean) == expected["image_mean"] and list(processor.image_std) == expected["image_std"]
    assert processor.do_resize and processor.do_rescale and processor.do_normalize


def test_processor_pixels_equal_the_model_transform(embedder, tmp_path):
    from transformers import AutoImageProcessor

    assert save_image_processor(embedder, tmp_path)
    image = Image.open(PHOTO).convert("RGB")
    reference = create_transform(embedder.data_config)(image)[None]
    pil = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(pil, reference)
    fast = AutoImageProcessor.from_pretrained(MODELS / "arcface-embedder")(image, return_tensors="pt")["pixel_values"]
    assert fast.shape == reference.shape and (fast - reference).abs().max() <= 1 / 127.5 + 1e-6  # one grey level


def test_feature_extraction_pipeline_returns_the_embeddings(embedder):
    from transformers import AutoImageProcessor, pipeline

    with torch.no_grad():
        pixels = create_transform(embedder.data_config)(Image.open(PHOTO).convert("RGB"))[None]
        expected = embedder(pixel_values=pixels).embeddings.numpy()
    got = np.asarray(pipeline("image-feature-extraction", model=str(MODELS / "arcface-embedder"))(str(PHOTO)))
    assert got.shape == (1, embedder.config.embedding_size)
    assert abs(float(np.linalg.norm(got)) - 1) < 1e-4  # L2-normalised, as the model card says
    assert float(got[0] @ expected[0]) > 0.9999  # the torchvision backend: within one grey level of the pixels
    exact = AutoImageProcessor.from_pretrained(MODELS / "arcface-embedder", backend="pil")
    extractor = pipeline("image-feature-extraction", model=str(MODELS / "arcface-embedder"), image_processor=exact)
    np.testing.assert_allclose(np.asarray(extractor(str(PHOTO))), expected, atol=1e-5)


def test_pipeline_after_a_plain_import_model_pkg():
    """`import model_pkg` then `from transformers import pipeline`: the petmatch classes are registered in time."""
    import subprocess
    import sys

    code = (
        "import model_pkg\nfrom transformers import pipeline\n"
        f"out = pipeline('image-feature-extraction', model={str(MODELS / 'arcface-embedder')!r})({str(PHOTO)!r})\n"
        "print(len(out), len(out[0]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "512"]
