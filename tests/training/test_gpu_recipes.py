"""The GPU recipes' own pieces (model_pkg/training/gpu_recipes.py, train/arcface_gpu.py, train/dual_image_gpu.py), checked on the CPU: the batch
augmentation, the P x K sampler, the validation metrics on cases whose answer is known, and that a saved best
checkpoint is a `from_pretrained` folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.training.gpu_recipes import augment, cosine_factor
from train.arcface_gpu import one_shot_recall, pk_batches, save_best
from train.dual_image_gpu import recalls


def test_augment_keeps_shape_and_range_and_follows_its_generator():
    smooth = F.interpolate(torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(0)), size=40, mode="bilinear")
    photos = (smooth * 255).to(torch.uint8)  # smooth photos, so a small crop or rotation keeps them alike
    a = augment(photos, torch.Generator().manual_seed(1))
    b = augment(photos, torch.Generator().manual_seed(1))
    c = augment(photos, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 40, 40) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)  # reproducible from the run's seed
    assert not torch.allclose(a, c)
    # a crop of 80-100% keeps the photo recognisable: each view correlates with its own photo most
    flat = F.normalize((a - a.mean((1, 2, 3), keepdim=True)).flatten(1), dim=1)
    orig = photos.float() / 255
    orig = F.normalize((orig - orig.mean((1, 2, 3), keepdim=True)).flatten(1), dim=1)
    sims = flat @ orig.T  # (views, photos)
    assert torch.equal(sims.argmax(1), torch.arange(6))


def test_pk_batches_draw_p_distinct_dogs_with_k_photos_each():
    labels = torch.tensor([d for d in range(10) for _ in range(3 if d % 2 else 6)])
    batches = pk_batches(labels, p=4, k=4, seed=0)
    for _ in range(20):
        idx = next(batches)
        dogs = labels[idx].numpy()
        assert len(idx) == 16
        assert len(set(dogs.tolist())) == 4
        assert all((dogs == d).sum() == 4 for d in set(dogs.tolist()))


def test_one_shot_recall_is_one_for_separated_dogs_and_lower_for_noise():
    labels = torch.tensor([d for d in range(8) for _ in range(4)])
    centres = torch.eye(8, 16)
    perfect = F.normalize(centres[labels] + 0.01 * torch.randn(32, 16), dim=1)
    assert one_shot_recall(perfect, labels)["recall@1"] == 1.0
    noise = F.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    assert one_shot_recall(noise, labels)["recall@1"] < 0.6


def test_retrieval_recalls_match_a_hand_computed_case():
    images = torch.eye(3)  # three images, orthogonal
    texts = torch.stack([images] * 5, 1).clone()  # (3, 5, 3): every caption points at its own image
    perfect = recalls(images, texts)
    assert perfect["t2i_r1"] == 100.0 and perfect["i2t_r1"] == 100.0
    swapped = texts.clone()
    swapped[0] = -images[0]  # image 0's five captions point away from it
    out = recalls(images, swapped)
    assert out["t2i_r1"] == pytest.approx(100 * 10 / 15)  # those 5 of the 15 captions rank image 0 last
    assert out["t2i_r5"] == 100.0  # with 3 images everything is within the top 5
    assert out["i2t_r1"] == pytest.approx(100 * 2 / 3)  # image 0 finds 10 foreign captions above its own


def test_cosine_factor_warms_up_then_anneals_to_zero():
    assert cosine_factor(0.0, 0.1) == 0.0
    assert cosine_factor(0.05, 0.1) == pytest.approx(0.5)
    assert cosine_factor(0.1, 0.1) == pytest.approx(1.0)
    assert cosine_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    values = [cosine_factor(p, 0.1) for p in np.linspace(0.1, 1.0, 20)]
    assert all(x >= y for x, y in zip(values, values[1:]))


def test_saved_best_checkpoint_loads_with_from_pretrained(tmp_path):
    config = ArcFaceEmbedderConfig(backbone_pretrained=False, image_size=64, embedding_size=32, num_classes=5)
    model = ArcFaceEmbedderModel(config).eval()
    save_best(model, str(tmp_path / "best"))
    save_best(model, str(tmp_path / "best"))  # a second improvement replaces the folder whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    loaded = ArcFaceEmbedderModel.from_pretrained(str(tmp_path / "best")).eval()
    assert loaded.proj.weight.dtype == torch.float32  # fp16 on disk, float32 in memory
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.get_image_features(x), model.get_image_features(x), atol=2e-2)
