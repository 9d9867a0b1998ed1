"""Gallery search at scale on realistic dog-face embeddings: exact vs HNSW vs IVF-Flat vs IVF-PQ.

Three steps (bench/README.md, "Gallery at scale"):

    # 1. fit a generator on real embeddings of the DogFaceNet training dogs, check it against held-out dogs
    python -m model_pkg.embed --model models/arcface-embedder --images ../shared/data/dogfacenet --out runs/emb/dogfacenet-arcface
    python bench/bench_gallery_scale.py fit --embeddings runs/emb/dogfacenet-arcface --splits train/splits/dogfacenet.json \\
        --stats bench/results/dog_embedding_stats.npz --json bench/results/gallery_generator_check.json
    # 2. 1M vectors: exact, HNSW (M, efSearch), IVF-Flat and IVF-PQ (nlist, nprobe, exact re-ranking)
    OMP_NUM_THREADS=2 python bench/bench_gallery_scale.py speed --size 1000000 --json bench/results/gallery_scale_1m.json
    # 3. 10M vectors, IVF-PQ, generated in chunks (never all in memory), recall against chunked exact search
    OMP_NUM_THREADS=2 python bench/bench_gallery_scale.py sim --size 10000000 --json bench/results/gallery_scale_10m.json

The generator (:class:`DogEmbeddingGenerator`) draws identity centres from a Gaussian fitted to the centres
of real dogs (mean photo embedding per dog; its covariance corrected for the within-dog noise that a
mean of k photos still carries), photos as centre + within-dog noise drawn from the pooled within-dog
covariance of real dogs, scaled per dog by a factor drawn from the real dogs' spreads, then
L2-normalised; photos per dog follow the real distribution. ``fit`` compares, on held-out dogs, the real
and synthetic distributions of: the cosine to the nearest photo of the same dog, to the nearest photo of
another dog, of the 10th neighbour, and the photo-level rank-1 rate (and does the same for the older
near-duplicate generator of bench_gallery.py).

Latency is one query per call (batch 1), median (p50) and p90 over ``--single`` queries, with faiss on the
threads OMP_NUM_THREADS allows. recall@10 = overlap of the top 10 with exact search's top 10.
Queries are new photos of registered dogs (another draw around a registered dog's centre).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import faiss
import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model_pkg import vector_index as vi  # noqa: E402
from model_pkg.fileio import atomic_write_json  # noqa: E402

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
    cached .npz of test-dog embeddings (bench/save_test_embeddings.py)."""
    if args.embeddings.endswith(".npz"):
        with np.load(args.embeddings, allow_pickle=False) as f:
            return (
                f["embeddings"].astype(np.float32),
                f["labels"].astype(str),
                str(f["model"]),
                f"{f['split']} split (cached npz)",
            )
    from model_pkg.data import load_splits
    from model_pkg.embed import load_embeddings, read_manifest

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


# --------------------------------------------------------------------------- #
# Timing helpers
# --------------------------------------------------------------------------- #
def _stats(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"p50_ms": round(statistics.median(s), 4), "p90_ms": round(s[int(0.9 * (len(s) - 1))], 4), "runs": len(s)}


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _index_bytes(index: faiss.Index) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name)


def _recall(ids: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, truth)]))


def timed_search(search: Callable[[np.ndarray], np.ndarray], q: np.ndarray, single: int) -> tuple[dict, np.ndarray]:
    """Batch-1 latency over the first ``single`` queries, and the top ids of every query (one by one)."""
    search(q[:1])  # warm-up
    ms, ids = [], []
    for i in range(len(q)):
        t = time.perf_counter()
        ids.append(search(q[i : i + 1])[0])
        if i < single:
            ms.append((time.perf_counter() - t) * 1000)
    return _stats(ms), np.stack(ids)


def faiss_search(index: faiss.Index, k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda qq: index.search(qq, k)[1]


def reranked_search(index: faiss.Index, vectors: np.ndarray, k: int, factor: int) -> Callable[[np.ndarray], np.ndarray]:
    def run(qq):
        _, cand = index.search(qq, k * factor)
        return vi.rerank(vectors, qq, cand, k)[1]

    return run


def _machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "platform": platform.platform(),
        "faiss_version": getattr(faiss, "__version__", None),
        "numpy_version": np.__version__,
        "total_memory_bytes": psutil.virtual_memory().total,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


# --------------------------------------------------------------------------- #
# speed: everything in memory (1M)
# --------------------------------------------------------------------------- #
def cmd_speed(args) -> dict:
    k = 10
    gen = DogEmbeddingGenerator(load_stats(args.stats), args.size, seed=args.seed)
    t = time.perf_counter()
    x = gen.all()
    q = gen.queries(args.queries)
    print(f"generated {args.size:,} x {gen.dim} in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    result = {
        "config": {k_: v for k_, v in vars(args).items() if k_ not in ("json", "func")},
        "machine": _machine(),
        "results": [],
    }
    rows = result["results"]

    def emit(row):
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        atomic_write_json(result, args.json)  # written after every row: a long run keeps what it measured

    before = _rss()
    t = time.perf_counter()
    exact = faiss.IndexFlatIP(gen.dim)
    exact.add(x)
    build = time.perf_counter() - t
    lat, truth = timed_search(faiss_search(exact, k), q, args.single)
    emit(
        {
            "index": "exact",
            "build_s": round(build, 2),
            "index_bytes": x.nbytes,
            "rss_delta_bytes": _rss() - before,
            "batch1": lat,
            "recall_at_10": 1.0,
        }
    )
    del exact
    gc.collect()

    rng = np.random.default_rng(args.seed)
    for nlist in args.nlist:
        train_n = min(args.size, nlist * vi.TRAIN_POINTS_PER_CELL)
        sample = x[np.sort(rng.choice(args.size, size=train_n, replace=False))]
        before = _rss()
        t = time.perf_counter()
        flat = faiss.index_factory(gen.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        flat.train(sample)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        assign = flat.quantizer.search(x, 1)[1].ravel()  # shared by IVF-Flat and IVF-PQ (same cells)
        assign_s = time.perf_counter() - t
        t = time.perf_counter()
        flat.add_core(args.size, faiss.swig_ptr(x), None, faiss.swig_ptr(assign))
        add_s = time.perf_counter() - t
        flat_bytes, delta = _index_bytes(flat), _rss() - before
        for nprobe in args.nprobe:
            flat.nprobe = nprobe
            lat, ids = timed_search(faiss_search(flat, k), q, args.single)
            emit(
                {
                    "index": f"IVF{nlist},Flat",
                    "nlist": nlist,
                    "nprobe": nprobe,
                    "train_vectors": train_n,
                    "build_s": round(train_s + assign_s + add_s, 2),
                    "index_bytes": flat_bytes,
                    "rss_delta_bytes": delta,
                    "batch1": lat,
                    "recall_at_10": _recall(ids, truth),
                }
            )
        quantizer = faiss.clone_index(flat.quantizer)
        del flat
        gc.collect()
        for m in args.pq_m:
            before = _rss()
            t = time.perf_counter()
            pq = faiss.IndexIVFPQ(quantizer, gen.dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            pq.do_polysemous_training = False
            vi.configure_pq_training(pq)
            pq.train(sample)  # the cells are trained already: this trains the codebooks only
            pq_train_s = time.perf_counter() - t
            t = time.perf_counter()
            pq.add_core(args.size, faiss.swig_ptr(x), None, faiss.swig_ptr(assign))
            pq_add_s = time.perf_counter() - t
            pq_bytes, delta = _index_bytes(pq), _rss() - before
            for nprobe in args.nprobe:
                pq.nprobe = nprobe
                for factor in args.rerank:
                    search = faiss_search(pq, k) if factor == 1 else reranked_search(pq, x, k, factor)
                    lat, ids = timed_search(search, q, args.single)
                    emit(
                        {
                            "index": f"IVF{nlist},PQ{m}" + (f" + exact re-rank of {factor * k}" if factor > 1 else ""),
                            "nlist": nlist,
                            "nprobe": nprobe,
                            "pq_m": m,
                            "rerank": factor,
                            "train_vectors": train_n,
                            "build_s": round(train_s + pq_train_s + assign_s + pq_add_s, 2),
                            "index_bytes": pq_bytes,
                            "rss_delta_bytes": delta,
                            "batch1": lat,
                            "recall_at_10": _recall(ids, truth),
                        }
                    )
            pq.own_fields = False  # the quantizer is shared with the next PQ size
            del pq
            gc.collect()

    if args.gallery:  # the GalleryIndex path itself: auto index choice, search() end to end
        from model_pkg.gallery import GalleryIndex

        g = GalleryIndex(gen.dim, "ip", approximate_above=vi.EXACT_MAX)
        g.add(x, ["d"] * args.size, ids=[str(i) for i in range(args.size)])
        t = time.perf_counter()
        g.search(q[:1], k=k)  # builds the approximate index chosen for this size
        build = time.perf_counter() - t
        lat, ids = timed_search(lambda qq: np.array([[int(v) for v in g.search(qq, k=k)[2][0]]]), q, args.single)
        emit(
            {
                "index": f"GalleryIndex auto ({g.approximate_spec.factory_string()})",
                "spec": g.approximate_spec.to_dict(),
                "build_s": round(build, 2),
                "index_bytes": _index_bytes(g._active_index()),
                "batch1": lat,
                "recall_at_10": _recall(ids, truth),
            }
        )
        del g
        gc.collect()

    for m_hnsw in args.hnsw_m:
        before = _rss()
        t = time.perf_counter()
        h = faiss.IndexHNSWFlat(gen.dim, m_hnsw, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = args.ef_construction
        h.add(x)
        build = time.perf_counter() - t
        h_bytes, delta = _index_bytes(h), _rss() - before
        for ef in args.ef_search:
            h.hnsw.efSearch = ef
            lat, ids = timed_search(faiss_search(h, k), q, args.single)
            emit(
                {
                    "index": f"HNSW{m_hnsw} efSearch={ef}",
                    "hnsw_m": m_hnsw,
                    "ef_search": ef,
                    "ef_construction": args.ef_construction,
                    "build_s": round(build, 2),
                    "index_bytes": h_bytes,
                    "rss_delta_bytes": delta,
                    "batch1": lat,
                    "recall_at_10": _recall(ids, truth),
                }
            )
        del h
        gc.collect()
    print(markdown(rows))
    return result


# --------------------------------------------------------------------------- #
# sim: 10M, generated in chunks
# --------------------------------------------------------------------------- #
def cmd_sim(args) -> dict:
    k = 10
    gen = DogEmbeddingGenerator(load_stats(args.stats), args.size, seed=args.seed)
    q = gen.queries(args.queries)
    config = {k_: v for k_, v in vars(args).items() if k_ not in ("json", "func")}
    config["rerank_store"] = os.path.basename(args.rerank_store) if args.rerank_store else None  # no machine paths in results
    result = {"config": config, "machine": _machine(), "results": []}
    start_rss = _rss()
    # training sample: fresh dogs from the same generator (another seed), never the indexed vectors themselves
    train_n = max(args.nlist * vi.TRAIN_POINTS_PER_CELL, 256 * 40)
    t0 = time.perf_counter()
    sample = DogEmbeddingGenerator(load_stats(args.stats), train_n, seed=args.seed + 1000).all()
    quantizer = faiss.IndexFlatIP(gen.dim)
    indexes = {m: faiss.IndexIVFPQ(quantizer, gen.dim, args.nlist, m, 8, faiss.METRIC_INNER_PRODUCT) for m in args.pq_m}
    for index in indexes.values():
        index.do_polysemous_training = False
        vi.configure_pq_training(index)
    first = indexes[args.pq_m[0]]
    first.train(sample)
    for index in indexes.values():
        if index is not first:
            index.train(sample)  # codebooks only: the shared quantizer is trained
    train_s = time.perf_counter() - t0
    del sample
    print(f"trained in {train_s:.1f} s", file=sys.stderr, flush=True)

    store = None
    if args.rerank_store:  # float16 copy of every vector on disk, for exact re-ranking of candidates
        store = np.lib.format.open_memmap(args.rerank_store, mode="w+", dtype=np.float16, shape=(args.size, gen.dim))
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    t_gen = t_assign = t_add = t_truth = 0.0
    for c in range(gen.num_chunks()):
        t = time.perf_counter()
        x = gen.chunk(c)
        lo = c * CHUNK
        t_gen += time.perf_counter() - t
        t = time.perf_counter()  # exact top-10 of the queries, merged chunk by chunk
        s = q @ x.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + lo], 1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        t_truth += time.perf_counter() - t
        t = time.perf_counter()
        assign = quantizer.search(x, 1)[1].ravel()
        t_assign += time.perf_counter() - t
        t = time.perf_counter()
        xids = np.arange(lo, lo + len(x), dtype=np.int64)
        for index in indexes.values():
            index.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(xids), faiss.swig_ptr(assign))
        if store is not None:
            store[lo : lo + len(x)] = x.astype(np.float16)
        t_add += time.perf_counter() - t
        if c % 10 == 0:
            print(
                f"chunk {c + 1}/{gen.num_chunks()} gen {t_gen:.0f}s assign {t_assign:.0f}s add {t_add:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    if store is not None:
        store.flush()
    result["timing_s"] = {
        "train": round(train_s, 1),
        "generate": round(t_gen, 1),
        "exact_truth": round(t_truth, 1),
        "assign": round(t_assign, 1),
        "add_codes": round(t_add, 1),
    }
    result["rss_bytes_all_indexes"] = _rss() - start_rss
    rows = result["results"]
    for m, index in indexes.items():
        nbytes = _index_bytes(index)
        for nprobe in args.nprobe:
            index.nprobe = nprobe
            factors = [1] + ([f for f in args.rerank if f > 1] if store is not None else [])
            for factor in factors:
                search = faiss_search(index, k) if factor == 1 else reranked_search(index, store, k, factor)
                lat, ids = timed_search(search, q, args.single)
                row = {
                    "index": f"IVF{args.nlist},PQ{m}"
                    + (f" + re-rank of {factor * k} from float16 on disk" if factor > 1 else ""),
                    "nlist": args.nlist,
                    "nprobe": nprobe,
                    "pq_m": m,
                    "rerank": factor,
                    "index_bytes": nbytes,
                    "rerank_store_bytes": int(args.size * gen.dim * 2) if factor > 1 else 0,
                    "batch1": lat,
                    "recall_at_10": _recall(ids, best_i),
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                atomic_write_json(result, args.json)
    print(markdown(rows))
    return result


def markdown(rows: list[dict]) -> str:
    lines = ["| index | nprobe / ef | build s | index MB | p50 ms | p90 ms | recall@10 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        knob = r.get("nprobe", r.get("ef_search", "-"))
        build = f"{r['build_s']:.1f}" if "build_s" in r else "-"
        lines.append(
            f"| {r['index']} | {knob} | {build} | {r['index_bytes'] / 2**20:,.0f} | {r['batch1']['p50_ms']:.3f} | "
            f"{r['batch1']['p90_ms']:.3f} | {r['recall_at_10']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the generator on real embeddings and check it on held-out dogs")
    f.add_argument("--embeddings", required=True, help="an embeddings folder (model_pkg.embed) or a cached test-dog .npz")
    f.add_argument("--splits", default="train/splits/dogfacenet.json")
    f.add_argument("--stats", default="bench/results/dog_embedding_stats.npz")
    f.add_argument("--json", default="bench/results/gallery_generator_check.json")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_fit)
    for name, fn in (("speed", cmd_speed), ("sim", cmd_sim)):
        p = sub.add_parser(name)
        p.add_argument("--stats", default="bench/results/dog_embedding_stats.npz")
        p.add_argument("--size", type=int, default=1_000_000 if name == "speed" else 10_000_000)
        p.add_argument("--queries", type=int, default=200)
        p.add_argument("--single", type=int, default=200, help="queries timed one by one")
        p.add_argument("--nlist", type=ints if name == "speed" else int, default=[4096] if name == "speed" else 4096)
        p.add_argument("--nprobe", type=ints, default=[8, 16, 32, 64])
        p.add_argument("--pq-m", type=ints, default=[64])
        p.add_argument("--rerank", type=ints, default=[1, 4, 10], help="re-rank factors (1: none)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", required=True)
        p.set_defaults(func=fn)
    speed = sub.choices["speed"]
    speed.add_argument("--hnsw-m", type=ints, default=[32], help="HNSW M values (empty: skip HNSW)")
    speed.add_argument("--ef-search", type=ints, default=[64, 128, 256])
    speed.add_argument("--ef-construction", type=int, default=40)
    speed.add_argument("--gallery", action="store_true", help="also time GalleryIndex.search with its automatic index")
    sub.choices["sim"].add_argument("--rerank-store", default=None, help="float16 vectors file for re-ranking (outside the repo)")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
