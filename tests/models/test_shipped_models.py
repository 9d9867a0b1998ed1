"""The models shipped in `models/` load offline and behave on real photos.

These guard the release artifacts themselves (a retrain that breaks the config, saves float32 weights over
the size budget, or saves a backbone that needs the network would fail here), not the training code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import model_pkg  # noqa: F401  (registers the Auto classes)

MODELS = Path(__file__).resolve().parents[2] / "models"


def _weights_dtypes(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


@pytest.mark.parametrize("name, budget_mb", [("pair-matcher", 25), ("arcface-embedder", 25), ("dual-encoder", 25)])
def test_shipped_weights_are_fp16_and_within_budget(name, budget_mb):
    folder = MODELS / name
    size_mb = (folder / "model.safetensors").stat().st_size / 2**20
    assert size_mb < budget_mb, f"{name}: {size_mb:.1f} MB"
    assert _weights_dtypes(folder) - {"I64"} == {"F16"}  # every float tensor in half precision (I64: BN counters)
    assert (folder / "README.md").read_text().startswith("---\n")  # a model card with Hub front matter


def test_arcface_embedder_loads_offline_and_separates_dogs(hub_offline, dog_faces, torch_single_thread):
    from transformers import AutoModel

    from model_pkg.arcface import ArcFaceEmbedderModel
    from model_pkg.arcface.embedding import embed_paths

    model = AutoModel.from_pretrained(MODELS / "arcface-embedder")
    assert isinstance(model, ArcFaceEmbedderModel)
    assert model.config.score_threshold is not None  # gallery thresholds calibrated on val ship with it
    same = sorted((dog_faces / "327").glob("*.jpg"))[:2]  # test-split dogs, never trained on
    other = sorted((dog_faces / "335").glob("*.jpg"))[:1]
    emb = embed_paths(model.eval(), [str(p) for p in [*same, *other]])
    assert emb.shape == (3, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
