"""Gallery search on this machine: exact IndexFlatIP vs HNSW, build time, memory, latency, recall.

    python bench/bench_gallery.py --sizes 10000,100000,1000000 --dim 512 --queries 1000 \\
        --json bench/results/gallery.json

Synthetic clustered float32 vectors (L2-normalised noisy copies of random unit "dog" centres,
``--per-id`` photos per dog); queries are fresh noisy copies of registered dogs.  For each size:

* build time (s) of ``IndexFlatIP`` and of ``IndexHNSWFlat`` (M=32, the same settings that
  ``model_pkg.gallery.GalleryIndex`` uses; ``--ef-construction``);
* memory: index bytes (``len(faiss.serialize_index(index))``) and the process RSS growth while
  building (psutil).  A ``GalleryIndex`` in HNSW mode keeps the flat index too, so it needs
  about exact + HNSW;
* search latency per query, top ``--k``: batch of 1 (one query per call) and batch of 100
  (call time / 100), median and p90 in ms;
* HNSW recall@1 (same top-1 as exact) and recall@10 (overlap of the top 10) against exact
  search, for every ``--ef-search`` value.

Writes the results as JSON (``--json``) and prints a markdown table.  Memory hungry at 1M x 512
(the vectors alone are 2 GB, each index holds a copy): run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import faiss
import gallery_measure as measure  # a sibling of this script
import numpy as np
import psutil

from model_pkg.gallery import HNSW_M


def synthetic(size: int, dim: int, queries: int, per_id: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(gallery (size, dim), queries (queries, dim)) float32, unit norm, clustered by identity."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, size // per_id)
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = np.float32(noise / np.sqrt(dim))

    def copies(idx: np.ndarray) -> np.ndarray:
        x = centres[idx] + scale * rng.standard_normal((idx.size, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    gallery = np.empty((size, dim), dtype=np.float32)
    chunk = 100_000
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        gallery[start:stop] = copies(np.arange(start, stop) % n_ids)
    q = copies(rng.integers(0, n_ids, size=queries))
    return gallery, np.ascontiguousarray(q)


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def stats(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"median_ms": round(statistics.median(s), 4), "p90_ms": round(s[int(0.9 * (len(s) - 1))], 4), "runs": len(s)}


def latency(index: faiss.Index, q: np.ndarray, k: int, single: int) -> tuple[dict, dict, np.ndarray]:
    """Batch-1 and batch-100 latency per query, and the top-k ids of all queries."""
    index.search(q[:1], k)  # warm-up
    one = []
    for i in range(min(single, len(q))):
        t = time.perf_counter()
        index.search(q[i : i + 1], k)
        one.append((time.perf_counter() - t) * 1000)
    per_query, ids = [], []
    for start in range(0, len(q), 100):
        batch = q[start : start + 100]
        t = time.perf_counter()
        _, idx = index.search(batch, k)
        per_query.append((time.perf_counter() - t) * 1000 / len(batch))
        ids.append(idx)
    return stats(one), stats(per_query), np.concatenate(ids)


def build(make, x: np.ndarray) -> tuple[faiss.Index, float, int, int]:
    before = rss()
    t = time.perf_counter()
    index = make()
    index.add(x)
    seconds = time.perf_counter() - t
    delta = rss() - before
    nbytes = int(faiss.serialize_index(index).size)
    return index, seconds, nbytes, delta


def run_size(size: int, args) -> list[dict]:
    x, q = synthetic(size, args.dim, args.queries, args.per_id, args.noise, args.seed)
    k = min(args.k, size)
    rows = []

    exact, t_build, nbytes, delta = build(lambda: faiss.IndexFlatIP(args.dim), x)
    one, hundred, exact_ids = latency(exact, q, k, args.single)
    rows.append(
        {
            "size": size,
            "index": "exact",
            "build_s": round(t_build, 3),
            "index_bytes": nbytes,
            "rss_delta_bytes": delta,
            "batch1": one,
            "batch100_per_query": hundred,
            "recall_at_1": 1.0,
            "recall_at_10": 1.0 if k >= 10 else None,
        }
    )

    def make_hnsw():
        h = faiss.IndexHNSWFlat(args.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = args.ef_construction
        return h

    hnsw, t_build, nbytes, delta = build(make_hnsw, x)
    del x
    for ef in args.ef_search:
        hnsw.hnsw.efSearch = ef
        one, hundred, ids = latency(hnsw, q, k, args.single)
        rows.append(
            {
                "size": size,
                "index": f"hnsw M={HNSW_M} ef={ef}",
                "ef_search": ef,
                "ef_construction": args.ef_construction,
                "build_s": round(t_build, 3),
                "index_bytes": nbytes,
                "rss_delta_bytes": delta,
                "batch1": one,
                "batch100_per_query": hundred,
                "recall_at_1": float(np.mean(ids[:, 0] == exact_ids[:, 0])),
                "recall_at_10": None
                if k < 10
                else float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ids, exact_ids)])),
            }
        )
    del exact, hnsw
    gc.collect()
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| vectors | index | build s | index MB | RSS +MB | batch-1 median / p90 ms | "
        "batch-100 per query median / p90 ms | recall@1 | recall@10 |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        r10 = r.get("recall_at_10")
        lines.append(
            f"| {r['size']:,} | {r['index']} | {r['build_s']:.2f} | {r['index_bytes'] / 2**20:.1f} | "
            f"{r['rss_delta_bytes'] / 2**20:.1f} | {r['batch1']['median_ms']:.3f} / {r['batch1']['p90_ms']:.3f} | "
            f"{r['batch100_per_query']['median_ms']:.4f} / {r['batch100_per_query']['p90_ms']:.4f} | "
            f"{r['recall_at_1']:.3f} | {'-' if r10 is None else f'{r10:.3f}'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=ints("10000,100000,1000000"), help="gallery sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10, help="neighbours per search (recall@10 needs >= 10)")
    parser.add_argument("--single", type=int, default=None, help="queries timed one by one (default: all --queries)")
    parser.add_argument("--ef-search", type=ints, default=[64], help="HNSW efSearch values, comma-separated")
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--per-id", type=int, default=5, help="photos per synthetic dog")
    parser.add_argument("--noise", type=float, default=0.5, help="norm of the per-photo noise around a dog's centre")
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if not args.sizes or min(args.sizes) < 1 or args.dim < 1 or args.queries < 1 or args.k < 1:
        parser.error("--sizes, --dim, --queries and --k must be positive")
    args.single = args.queries if args.single is None else args.single
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    rows = []
    for size in args.sizes:
        print(f"size {size:,} x {args.dim} ...", file=sys.stderr, flush=True)
        rows.extend(run_size(size, args))
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": measure.machine_info(),
        "results": rows,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, args.json)
    print(markdown(rows))
    return result


if __name__ == "__main__":
    main()
