"""model_pkg.photo_batches: the one loop from photos to vectors (loading, batching, failure policy, progress)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_pkg.data import ImageLoadError
from model_pkg.photo_batches import PixelLoader, check_photos, embed_batches, load_photos

PHOTOS = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "photos" / "dog_faces").glob("*/*.jpg"))[:5]


def _pixels(size: int = 8):
    return PixelLoader(lambda im: torch.from_numpy(np.asarray(im.resize((size, size)), np.float32)).permute(2, 0, 1))


def _mean(pixels: list) -> np.ndarray:
    return torch.stack(pixels).mean(dim=(2, 3)).numpy()  # (B, 3)


@pytest.fixture
def bad(tmp_path) -> str:
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"not a photo")
    return str(path)


def test_batches_in_order_with_progress():
    seen, progress = [], []

    def embed(items: list) -> np.ndarray:
        seen.append(len(items))
        return _mean(items)

    out = embed_batches(PHOTOS, embed, load=_pixels(), batch_size=2, progress=lambda d, t: progress.append((d, t)))
    assert seen == [2, 2, 1]
    assert progress == [(2, 5), (4, 5), (5, 5)]
    assert out.kept == [0, 1, 2, 3, 4] and out.skipped == []
    assert np.array_equal(out.vectors, _mean(load_photos(PHOTOS, _pixels())[0]))


def test_raise_names_the_photo(bad):
    calls = []
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        embed_batches([PHOTOS[0], bad], lambda items: calls.append(items) or _mean(items), load=_pixels())
    assert calls == []  # the bad photo is in the first window: no model work
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        load_photos([bad], _pixels())
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        check_photos([PHOTOS[0], bad])


def test_skip_reports_which_and_why(bad):
    seen, progress = [], []

    def embed(items: list) -> np.ndarray:
        seen.append(len(items))
        return _mean(items)

    photos = [PHOTOS[0], bad, bad, PHOTOS[1]]
    out = embed_batches(
        photos, embed, load=_pixels(), batch_size=2, on_error="skip", progress=lambda d, t: progress.append((d, t))
    )
    assert out.kept == [0, 3] and [i for i, _ in out.skipped] == [1, 2]
    assert all("bad.jpg" in reason and "cannot load image" in reason for _, reason in out.skipped)
    assert seen == [1, 1] and progress == [(2, 4), (4, 4)]  # the window's readable photos only, progress per window
    assert out.vectors.shape == (2, 3)
    loaded, skipped = load_photos(photos, _pixels(), on_error="skip")
    assert len(loaded) == 2 and skipped == out.skipped


def test_nothing_embedded(bad):
    out = embed_batches([bad], _mean, load=_pixels(), on_error="skip", dim=7)
    assert out.vectors.shape == (0, 7) and out.kept == [] and len(out.skipped) == 1
    assert embed_batches([], _mean, dim=3).vectors.shape == (0, 3)


def test_loaded_already_and_workers(bad):
    images = load_photos(PHOTOS[:3])[0]
    out = embed_batches(images, lambda ims: np.array([[im.size[0]] for im in ims]), load=None, batch_size=2)
    assert out.vectors[:, 0].tolist() == [im.size[0] for im in images]
    one = embed_batches(PHOTOS + [bad], _mean, load=_pixels(), batch_size=2, on_error="skip")
    two = embed_batches(PHOTOS + [bad], _mean, load=_pixels(), batch_size=2, on_error="skip", num_workers=2)
    assert np.array_equal(one.vectors, two.vectors) and one.kept == two.kept and one.skipped == two.skipped


def test_policy_checked():
    with pytest.raises(ValueError, match="on_error"):
        embed_batches(PHOTOS, _mean, on_error="ignore")
    with pytest.raises(ValueError, match="on_error"):
        load_photos(PHOTOS, on_error="warn")
