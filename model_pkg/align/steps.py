"""The numerical steps of mini-vec2vec, as functions of arrays and explicit settings.

Apart from `modeling_mini_vec2vec`, which runs them in order (the pipeline in its docstring) and owns the
fitted map, because each step is a self-contained piece of linear algebra or clustering that diagnostics
(`scripts/alignment_diagnostics.py`) call on their own. Every function that draws random numbers takes
the pipeline's `np.random.Generator` and draws from it in a fixed order, so a seed gives one map.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import torch

__all__ = [
    "EPS",
    "centre_and_normalize",
    "centred_kernel",
    "csls_dictionary",
    "kmeans",
    "match_centroids",
    "mean_of_nearest",
    "normalize",
    "procrustes",
]

EPS = 1e-8


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm (a zero row stays zero: its norm is floored at `EPS`)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def centre_and_normalize(x: np.ndarray, mean: np.ndarray, name: str) -> np.ndarray:
    """Rows of `x` minus `mean`, L2-normalised; a ValueError naming `name` for rows that equal the mean."""
    centred = x - mean
    norms = np.linalg.norm(centred, axis=1)
    flat = norms <= 1e-6 * max(float(np.linalg.norm(mean)), 1.0)
    if flat.any():
        rows = np.flatnonzero(flat)
        raise ValueError(
            f"{name} row(s) {rows[:10].tolist()} equal the mean embedding, so they have no direction once centred: "
            "drop these duplicates of the mean"
        )
    return centred / norms[:, None]


def procrustes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The (semi-)orthogonal W (Dx, Dy) minimising ||x W - y||: U V^T from the SVD of x^T y (for unequal
    dimensions the semi-orthogonal optimum, what zero-padding to a square problem gives). float32
    throughout, by torch: 3x faster than scipy's float64 `orthogonal_procrustes` on 1280-d features
    (Refine-1 runs one per iteration), the same map to 1e-6."""
    cross = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).T @ torch.from_numpy(
        np.ascontiguousarray(y, dtype=np.float32)
    )
    u, _, vt = torch.linalg.svd(cross, full_matrices=False)
    return (u @ vt).numpy()


def centred_kernel(c: np.ndarray) -> np.ndarray:
    """H C C^T H with H = I - 11^T / k: the centroids' Gram matrix, centred."""
    h = np.eye(len(c)) - 1.0 / len(c)
    return h @ (c.astype(np.float64) @ c.T.astype(np.float64)) @ h


def mean_of_nearest(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, k: int, chunk_size: int = 2048) -> np.ndarray:
    """For each query row, the mean of `values` at its k most cosine-similar `keys` rows."""
    q = torch.from_numpy(normalize(queries))
    kt = torch.from_numpy(normalize(keys)).T.contiguous()
    v = torch.from_numpy(values)
    out = []
    for i in range(0, len(q), chunk_size):
        top = (q[i : i + chunk_size] @ kt).topk(k, dim=1).indices  # (chunk, k)
        out.append(v[top].mean(dim=1))
    return torch.cat(out).numpy()


def csls_dictionary(mapped_a: np.ndarray, xb: np.ndarray, k: int, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (into A, into B) of a dictionary built in both directions by CSLS.

    CSLS(a, b) = 2 cos(a, b) - r_B(a) - r_A(b), where r_B(a) is the mean cosine of a to its k nearest B
    points (and r_A(b) likewise): it penalises hubs, points that are everybody's nearest neighbour, which
    plain nearest neighbours pair with far too many points.
    """
    a = torch.from_numpy(normalize(mapped_a))
    b = torch.from_numpy(xb)
    k_a, k_b = min(k, len(b)), min(k, len(a))
    r_a = torch.cat([(a[i : i + chunk_size] @ b.T).topk(k_a, dim=1).values.mean(1) for i in range(0, len(a), chunk_size)])
    r_b = torch.cat([(b[i : i + chunk_size] @ a.T).topk(k_b, dim=1).values.mean(1) for i in range(0, len(b), chunk_size)])
    best_b = torch.cat([(2 * (a[i : i + chunk_size] @ b.T) - r_b[None, :]).argmax(1) for i in range(0, len(a), chunk_size)])
    best_a = torch.cat([(2 * (b[i : i + chunk_size] @ a.T) - r_a[None, :]).argmax(1) for i in range(0, len(b), chunk_size)])
    rows_a = torch.cat([torch.arange(len(a)), best_a])
    rows_b = torch.cat([best_b, torch.arange(len(b))])
    return rows_a.numpy(), rows_b.numpy()


def kmeans(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    backend: str,
    max_iter: int,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Centroids (k, D) of `x`, from `init` or k-means++ seeds: Lloyd's iterations by faiss or scikit-learn
    (`backend`: `"faiss"` or `"sklearn"`, `MiniVec2VecConfig.kmeans_backend`). Draws one seed from `rng`.

    k-means++ seeding matters here: with random seeds the two sides' partitions differ far more
    often and the centroid matching fails (measured on the tests' data: anchor cosine .12 -> .43).
    """
    # imported here, not at module level: scikit-learn takes ~3 s to import and `model_pkg` registers this
    # family's config with AutoConfig whenever any model loads (the app's cold start)
    from sklearn.cluster import KMeans, kmeans_plusplus

    seed = int(rng.integers(2**31 - 1))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if backend == "faiss":
        if init is None:
            init, _ = kmeans_plusplus(x, k, random_state=seed)
        clustering = faiss.Kmeans(x.shape[1], k, niter=max_iter, seed=seed)
        clustering.cp.min_points_per_centroid = 1  # small samples are fine here; silences faiss's warning
        clustering.cp.max_points_per_centroid = max(len(x) // k + 1, 256)  # never subsample
        clustering.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        return np.array(clustering.centroids, copy=True)
    fitted = KMeans(
        n_clusters=k,
        init="k-means++" if init is None else init,
        n_init=1,
        max_iter=max_iter,
        random_state=seed,
    ).fit(x)
    return fitted.cluster_centers_.astype(np.float32)


def match_centroids(
    ca: np.ndarray, cb: np.ndarray, rng: np.random.Generator, *, method: str, restarts: int
) -> tuple[np.ndarray, float]:
    """Permutation of `cb`'s rows onto `ca`'s that best agrees on their centred kernels, and its score (the
    QAP objective over that of `ca`'s kernel with itself): the best of `restarts` runs of
    `scipy.optimize.quadratic_assignment` (`method`: `"faq"`, randomised starts, or `"2opt"`) drawing from `rng`."""
    from scipy.optimize import quadratic_assignment  # see `kmeans`: kept off the import path of every model

    ka, kb = centred_kernel(ca), centred_kernel(cb)
    options: dict[str, Any] = {"maximize": True}
    if method == "faq":
        options["P0"] = "randomized"
    best: Any = None
    for _ in range(restarts):
        res = quadratic_assignment(ka, kb, method=method, options={**options, "rng": rng})
        if best is None or res.fun > best.fun:
            best = res
    return best.col_ind, float(best.fun) / float(np.sum(ka * ka))
