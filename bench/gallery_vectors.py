"""Realistic dog-face embeddings for the gallery-at-scale bench: the generator, its fit, and its check.

:class:`DogEmbeddingGenerator` draws ``size`` L2-normalised vectors that behave like real dog-photo
embeddings (identity centres from a Gaussian fitted to real dogs' centres, photos as centre + scaled
within-dog noise; the model is described in ``bench/bench_gallery_scale.py``). :func:`fit_stats` fits it
on real embeddings, :func:`cmd_fit` (``bench_gallery_scale.py fit``) saves those statistics and compares
real and synthetic neighbour profiles on held-out dogs.

Separate from ``bench_gallery_scale.py`` because the generator is a data source with its own validation,
shared by the in-memory ``speed`` tables and the chunked ``sim`` (``gallery_scale_sim.py``); neither
needs to know how the vectors are drawn.
"""

from __future__ import annotations

import os

import numpy as np

from model_pkg.fileio import atomic_write_json

CENTRE_BLOCK = 4096  # identities whose centres come from one seeded draw (any block can be regenerated)
CHUNK = 65_536  # vectors generated per seeded draw


# --------------------------------------------------------------------------- #
# Generator
# --------------------------------------------------------------------------- #
def _basis(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows = principal directions scaled by sqrt(eigenvalue), eigenvalues), negatives clipped to 0."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    vals = np.clip(vals, 0.0, None)[::-1]
    vecs = vecs[:, ::-1]
    return (vecs * np.sqrt(vals)).T.astype(np.float32), vals


def fit_stats(x: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """Generator statistics of real embeddings ``x`` (N, d) grouped by ``labels``."""
    x = x.astype(np.float64)
    dogs, idx, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    means = np.zeros((len(dogs), x.shape[1]))
    np.add.at(means, idx, x)
    means /= counts[:, None]
    resid = x - means[idx]
    within = resid.T @ resid / (len(x) - len(dogs))  # pooled within-dog covariance (unbiased)
    # a dog's mean of k photos = its centre + within-noise / k, so that part is removed from the centres'
    # spread; the sample covariance (rank < number of dogs) keeps the real dogs' crowding in a few directions
    centred = means - means.mean(0)
    centre_cov = centred.T @ centred / (len(dogs) - 1) - np.mean(1.0 / counts) * within
    # per-dog noise scale: some dogs' photos are near-copies, others differ a lot (light, pose, age)
    sq = np.zeros(len(dogs))
    np.add.at(sq, idx, (resid**2).sum(1))
    many = counts >= 2
    spread = np.sqrt(sq[many] / (counts[many] - 1)) / np.sqrt(np.trace(within))
    centre_basis, centre_vals = _basis(centre_cov)
    within_basis, within_vals = _basis(within)
    return {
        "mean": means.mean(0).astype(np.float32),
        "centre_basis": centre_basis,
        "within_basis": within_basis,
        "spread_ratios": spread.astype(np.float32),  # per dog
        "photo_counts": counts.astype(np.int32),
        "centre_eigenvalues": centre_vals.astype(np.float32),
        "within_eigenvalues": within_vals.astype(np.float32),
    }


class DogEmbeddingGenerator:
    """``size`` synthetic dog-photo embeddings, reproducible chunk by chunk (see the module docstring)."""

    def __init__(self, stats: dict[str, np.ndarray], size: int, seed: int = 0, counts: np.ndarray | None = None):
        self.mean = stats["mean"]
        self.centre_basis = stats["centre_basis"]
        self.within_basis = stats["within_basis"]
        self.spreads = stats["spread_ratios"]
        self.dim = int(self.mean.shape[0])
        self.seed = seed
        self.size = size
        if counts is None:  # photos per dog drawn from the real distribution, the last dog cut to fit
            rng = np.random.default_rng([seed, 0])
            draw = rng.choice(stats["photo_counts"], size=size // 2 + 2)
            cum = np.cumsum(draw)
            n_ids = int(np.searchsorted(cum, size) + 1)
            counts = draw[:n_ids].copy()
            counts[-1] -= int(cum[n_ids - 1] - size)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.num_ids = len(self.counts)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        if b not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            rng = np.random.default_rng([self.seed, 1, b])
            z = rng.standard_normal((CENTRE_BLOCK, self.centre_basis.shape[0]), dtype=np.float32)
            self._cache[b] = (self.mean + z @ self.centre_basis, rng.choice(self.spreads, size=CENTRE_BLOCK))
        return self._cache[b]

    def centres(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centres (n, d), noise scale factors (n,)) of identity indexes ``ids``."""
        out = np.empty((len(ids), self.dim), np.float32)
        scale = np.empty(len(ids), np.float32)
        blocks = ids // CENTRE_BLOCK
        for b in np.unique(blocks):
            sel = blocks == b
            c, f = self._block(int(b))
            out[sel], scale[sel] = c[ids[sel] % CENTRE_BLOCK], f[ids[sel] % CENTRE_BLOCK]
        return out, scale

    def _photos(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c, s = self.centres(ids)
        e = rng.standard_normal((len(ids), self.within_basis.shape[0]), dtype=np.float32)
        x = c + s[:, None] * (e @ self.within_basis)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def labels(self, start: int, stop: int) -> np.ndarray:
        return np.searchsorted(self.starts, np.arange(start, stop), side="right") - 1

    def chunk(self, i: int) -> np.ndarray:
        """Rows [i*CHUNK, (i+1)*CHUNK) (fewer at the end), float32 (n, d), unit norm."""
        start, stop = i * CHUNK, min(self.size, (i + 1) * CHUNK)
        return self._photos(self.labels(start, stop), np.random.default_rng([self.seed, 2, i]))

    def num_chunks(self) -> int:
        return -(-self.size // CHUNK)

    def all(self) -> np.ndarray:
        out = np.empty((self.size, self.dim), np.float32)
        for i in range(self.num_chunks()):
            out[i * CHUNK : min(self.size, (i + 1) * CHUNK)] = self.chunk(i)
        return out

    def queries(self, n: int) -> np.ndarray:
        """New photos of ``n`` registered dogs drawn at random."""
        rng = np.random.default_rng([self.seed, 3])
        return np.ascontiguousarray(self._photos(rng.integers(0, self.num_ids, size=n), rng))


def load_stats(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:  # bases are stored as float16 to keep the file small
        return {k: f[k].astype(np.float32) if f[k].dtype == np.float16 else f[k] for k in f.files}


# --------------------------------------------------------------------------- #
# fit: statistics + validation against held-out real dogs
# --------------------------------------------------------------------------- #
def neighbour_profile(x: np.ndarray, labels: np.ndarray) -> dict:
    """Cosine to the nearest same-dog photo / nearest other-dog photo / 10th neighbour, and rank-1 rate."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    same = labels[:, None] == labels[None, :]
    has_mate = same.sum(1) > 1
    nearest_same = np.where(same, sims, -np.inf).max(1)[has_mate]
    nearest_other = np.where(same, -np.inf, sims).max(1)
    tenth = -np.partition(-sims, 9, axis=1)[:, 9]
    rank1 = same[np.arange(len(x)), sims.argmax(1)][has_mate].mean()
    q = [5, 25, 50, 75, 95]

    def quant(v):
        return {f"p{p}": round(float(np.percentile(v, p)), 4) for p in q}

    return {
        "photos": len(x),
        "dogs": len(np.unique(labels)),
        "nearest_same_dog": quant(nearest_same),
        "nearest_other_dog": quant(nearest_other),
        "tenth_neighbour": quant(tenth),
        "rank1": round(float(rank1), 4),
    }


def near_duplicates(counts: np.ndarray, dim: int, noise: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """bench_gallery.py's older generator: noisy copies of random unit centres."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    c = rng.standard_normal((len(counts), dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[labels] + np.float32(noise / np.sqrt(dim)) * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def _real_embeddings(args) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(vectors, dog labels, model, where): the unseen dogs of an embeddings folder (val + test split) or a
    cached .npz of test-dog embeddings (scripts/save_test_embeddings.py)."""
    if args.embeddings.endswith(".npz"):
        with np.load(args.embeddings, allow_pickle=False) as f:
            return (
                f["embeddings"].astype(np.float32),
                f["labels"].astype(str),
                str(f["model"]),
                f"{f['split']} split (cached npz)",
            )
    from model_pkg.data import load_splits
    from model_pkg.embedding_store import load_embeddings, read_manifest

    _, labels, x = load_embeddings(args.embeddings)
    splits = load_splits(args.splits)
    unseen = np.isin(np.asarray(labels), splits["val"] + splits["test"])  # dogs the embedder never trained on
    return x[unseen], np.asarray(labels)[unseen], read_manifest(args.embeddings)["model_id"], "val + test splits"


def cmd_fit(args) -> dict:
    x, labels_arr, model, where = _real_embeddings(args)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dogs = np.unique(labels_arr)
    half = np.random.default_rng(args.seed).permutation(dogs)[: len(dogs) // 2]
    fit_part = np.isin(labels_arr, half)  # the check: fit on half the dogs, compare with the other half
    held = ~fit_part
    check_stats = fit_stats(x[fit_part], labels_arr[fit_part].tolist())
    stats = fit_stats(x, labels_arr.tolist())  # what the benches use: every dog
    os.makedirs(os.path.dirname(os.path.abspath(args.stats)), exist_ok=True)
    tmp = args.stats + ".tmp.npz"
    np.savez(tmp, **{k: v.astype(np.float16) if v.dtype == np.float32 and v.ndim == 2 else v for k, v in stats.items()})
    os.replace(tmp, args.stats)

    held_labels = labels_arr[held]
    _, held_counts = np.unique(held_labels, return_counts=True)
    gen = DogEmbeddingGenerator(check_stats, int(held_counts.sum()), seed=args.seed, counts=held_counts)
    synth = gen.all()
    old_x, old_l = near_duplicates(held_counts, x.shape[1], seed=args.seed)
    cv = stats["centre_eigenvalues"]
    wv = stats["within_eigenvalues"]
    result = {
        "model": model,
        "real_embeddings": where,
        "check": "generator fitted on half of the dogs (seeded draw), compared with the other half",
        "fitted_on": {"dogs": len(dogs), "photos": len(x)},
        "centre_variance": round(float(cv.sum()), 4),
        "within_variance": round(float(wv.sum()), 4),
        "centre_dims_for_90pct": int(np.searchsorted(np.cumsum(cv) / cv.sum(), 0.9) + 1),
        "within_dims_for_90pct": int(np.searchsorted(np.cumsum(wv) / wv.sum(), 0.9) + 1),
        "held_out_real": neighbour_profile(x[held], held_labels),
        "synthetic_same_counts": neighbour_profile(synth, gen.labels(0, gen.size)),
        "near_duplicate_generator": neighbour_profile(old_x, old_l),
    }
    atomic_write_json(result, args.json)
    for key in ("held_out_real", "synthetic_same_counts", "near_duplicate_generator"):
        r = result[key]
        print(
            f"{key:26s} rank1 {r['rank1']:.3f}  nearest same p50 {r['nearest_same_dog']['p50']:.3f}  "
            f"nearest other p50 {r['nearest_other_dog']['p50']:.3f}  10th p50 {r['tenth_neighbour']['p50']:.3f}"
        )
    return result
