"""Synthetic clustered vectors and a small registered gallery, shared by tests/gallery/test_gallery.py and
tests/gallery/test_gallery_files.py (numpy RNG only, one faiss thread: fast on a busy CPU).

Plain functions, not fixtures: each test file wraps them in its own module-scoped fixtures, so that the
single-thread setting applies to those files only and not to every test that imports faiss.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from model_pkg.gallery import GalleryIndex

DIM = 32


def one_faiss_thread() -> Iterator[None]:
    """Generator for an autouse fixture: faiss on one thread while a test module runs."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_centres(n_ids: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n_ids, dim)))


def noisy(centres: np.ndarray, per_id: int, noise: float = 0.3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """per_id noisy unit copies of each centre; returns (vectors, centre index per row)."""
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(len(centres)), per_id)
    x = centres[idx] + noise / np.sqrt(centres.shape[1]) * rng.standard_normal((idx.size, centres.shape[1]))
    return unit(x), idx


def names(idx) -> list[str]:
    return [f"dog{i:03d}" for i in idx]


def registered_world() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """45 identities: 0-29 registered (5 photos each), 30-44 never registered."""
    centres = make_centres(45)
    gal, gidx = noisy(centres[:30], 5, seed=1)
    return centres, gal, names(gidx)


def build(world, **kw) -> GalleryIndex:
    _, gal, glab = world
    g = GalleryIndex(DIM, model_id="test-embedder@abc", **kw)
    g.add(gal, glab, metadata=[{"photo": f"p{i}.jpg"} for i in range(len(glab))])
    return g


def files_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}
