"""Embeddings: saved (N, D) vectors with their dogs and photo paths, the closest photos of two dogs, and the 2-D
projection (PCA / t-SNE) the map draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Embeddings:
    """One saved embeddings file: what the map draws and what the gallery tab measures similarities on."""

    vectors: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) identity as str
    paths: np.ndarray | None  # (N,) photo path relative to the data root, or None
    model: str | None


def load_embeddings(path: Path) -> Embeddings:
    with np.load(path, allow_pickle=False) as data:
        key = "embeddings" if "embeddings" in data.files else "features"
        if key not in data.files:
            raise ValueError(f"{Path(path).name} holds {data.files}: embeddings need an 'embeddings' or 'features' array")
        vectors = data[key].astype(np.float32)
        paths = data["paths"].astype(str) if "paths" in data.files else None
        if "labels" in data.files:
            labels = data["labels"].astype(str)
        elif paths is not None:
            labels = np.array([Path(p).parent.name or Path(p).stem for p in paths])
        else:
            raise ValueError(f"{Path(path).name} has no 'labels' or 'paths' array to colour the points by identity")
        model = str(data["model"]) if "model" in data.files else None
    if vectors.ndim != 2 or len(vectors) != len(labels) or (paths is not None and len(paths) != len(labels)):
        raise ValueError(f"{Path(path).name}: {key} has shape {vectors.shape} but there are {len(labels)} labels")
    return Embeddings(vectors, labels, paths, model)


def closest_photos(emb: Embeddings, dog_a: str, dog_b: str) -> dict | None:
    """The most similar photo pair of two dogs (cosine), with the mean cosine over all their pairs; None if a dog
    has no embeddings."""
    a, b = np.flatnonzero(emb.labels == dog_a), np.flatnonzero(emb.labels == dog_b)
    if not len(a) or not len(b):
        return None
    unit = emb.vectors / np.linalg.norm(emb.vectors, axis=1, keepdims=True).clip(1e-12)
    sims = unit[a] @ unit[b].T  # (|a|, |b|)
    i, j = np.unravel_index(int(np.argmax(sims)), sims.shape)
    return {
        "similarity": float(sims[i, j]),
        "mean similarity": float(sims.mean()),
        "photo a": None if emb.paths is None else str(emb.paths[a[i]]),
        "photo b": None if emb.paths is None else str(emb.paths[b[j]]),
    }


def project_2d(vectors: np.ndarray, method: str = "PCA", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) with scikit-learn PCA or t-SNE (perplexity capped for small N)."""
    if len(vectors) < 3:
        raise ValueError(f"need at least 3 embeddings for a 2-D projection, got {len(vectors)}")
    if method == "PCA":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(vectors) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)
