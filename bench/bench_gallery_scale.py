"""Gallery search at scale on realistic dog-face embeddings: exact vs HNSW vs IVF-Flat vs IVF-PQ.

Three steps (bench/README.md, "Scale"):

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

This file holds the command line and the in-memory ``speed`` step; the generator and ``fit`` live in
``bench/gallery_vectors.py``, the chunked ``sim`` step in ``bench/gallery_scale_sim.py`` and the shared
latency / memory / recall measurements in ``bench/gallery_measure.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import faiss
import gallery_measure as measure
import numpy as np
from gallery_scale_sim import cmd_sim, ivf_pq
from gallery_vectors import DogEmbeddingGenerator, cmd_fit, load_stats

from model_pkg import vector_index as vi
from model_pkg.fileio import atomic_write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmd_speed(args) -> dict:
    """``speed``: everything in memory (1M): exact, IVF-Flat, IVF-PQ (+ exact re-ranking), GalleryIndex, HNSW."""
    k = 10
    gen = DogEmbeddingGenerator(load_stats(args.stats), args.size, seed=args.seed)
    t = time.perf_counter()
    x = gen.all()
    q = gen.queries(args.queries)
    print(f"generated {args.size:,} x {gen.dim} in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    result = {
        "config": {k_: v for k_, v in vars(args).items() if k_ not in ("json", "func")},
        "machine": measure.machine_info(),
        "results": [],
    }
    rows = result["results"]

    def emit(row):
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        atomic_write_json(result, args.json)  # written after every row: a long run keeps what it measured

    before = measure.rss_bytes()
    t = time.perf_counter()
    exact = faiss.IndexFlatIP(gen.dim)
    exact.add(x)
    build = time.perf_counter() - t
    lat, truth = measure.timed_search(measure.faiss_search(exact, k), q, args.single)
    emit(
        {
            "index": "exact",
            "build_s": round(build, 2),
            "index_bytes": x.nbytes,
            "rss_delta_bytes": measure.rss_bytes() - before,
            "batch1": lat,
            "recall_at_10": 1.0,
        }
    )
    # `exact` stays: the IVF-PQ candidates are re-scored against it, as a GalleryIndex re-scores against its flat index
    rng = np.random.default_rng(args.seed)
    for nlist in args.nlist:
        train_n = min(args.size, nlist * vi.TRAIN_POINTS_PER_CELL)
        sample = x[np.sort(rng.choice(args.size, size=train_n, replace=False))]
        before = measure.rss_bytes()
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
        flat_bytes, delta = measure.index_file_bytes(flat), measure.rss_bytes() - before
        for nprobe in args.nprobe:
            flat.nprobe = nprobe
            lat, ids = measure.timed_search(measure.faiss_search(flat, k), q, args.single)
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
                    "recall_at_10": measure.recall_at_k(ids, truth),
                }
            )
        quantizer = faiss.clone_index(flat.quantizer)
        del flat
        gc.collect()
        for m in args.pq_m:
            before = measure.rss_bytes()
            t = time.perf_counter()
            pq = ivf_pq(quantizer, gen.dim, nlist, m, args.pq_bits)
            pq.train(sample)  # the cells are trained already: this trains the codebooks only
            pq_train_s = time.perf_counter() - t
            t = time.perf_counter()
            if args.pq_bits == 4:  # add_core with precomputed cells crashes fast-scan indexes (faiss 1.15)
                pq.add(x)
                pq.implem = vi.FASTSCAN_IMPLEM
            else:
                pq.add_core(args.size, faiss.swig_ptr(x), None, faiss.swig_ptr(assign))
            pq_add_s = time.perf_counter() - t
            pq_bytes, delta = measure.index_file_bytes(pq), measure.rss_bytes() - before
            for nprobe in args.nprobe:
                pq.nprobe = nprobe
                for factor in args.rerank:
                    search = measure.faiss_search(pq, k) if factor == 1 else measure.reranked_search(pq, exact, k, factor)
                    lat, ids = measure.timed_search(search, q, args.single)
                    emit(
                        {
                            "index": f"IVF{nlist},PQ{m}"
                            + ("x4fs" if args.pq_bits == 4 else "")
                            + (f" + exact re-rank of {factor * k}" if factor > 1 else ""),
                            "pq_bits": args.pq_bits,
                            "nlist": nlist,
                            "nprobe": nprobe,
                            "pq_m": m,
                            "rerank": factor,
                            "train_vectors": train_n,
                            # fast scan assigns the vectors again inside `add` (its pq_add_s): the shared pass not counted
                            "build_s": round(train_s + pq_train_s + (assign_s if args.pq_bits == 8 else 0) + pq_add_s, 2),
                            "index_bytes": pq_bytes,
                            "rss_delta_bytes": delta,
                            "batch1": lat,
                            "recall_at_10": measure.recall_at_k(ids, truth),
                        }
                    )
            pq.own_fields = False  # the quantizer is shared with the next PQ size
            del pq
            gc.collect()

    if args.gallery:  # the GalleryIndex path itself: auto index choice, search() end to end
        from model_pkg.gallery import GalleryIndex

        g = GalleryIndex(gen.dim, "ip")
        g.add(x, ["d"] * args.size, ids=[str(i) for i in range(args.size)])
        t = time.perf_counter()
        g.build_approximate()  # the index chosen for this size (also below the gallery's own threshold)
        build = time.perf_counter() - t
        index, spec = g.store._active_index(), g.approximate_spec  # the store's index the gallery searches
        knob = "nprobe" if spec.kind.startswith("ivf") else "ef_search"
        for value in args.gallery_knob or [getattr(spec, knob)]:  # the default, or the values asked for
            setattr(spec, knob, value)
            vi.apply_search_params(index, spec)
            lat, ids = measure.timed_search(lambda qq: np.array([[int(v) for v in g.search(qq, k=k)[2][0]]]), q, args.single)
            # the same faiss index without the gallery around it (candidates as the gallery asks for them): what the
            # gallery's own work (query checks, exact re-scoring, ids) adds
            raw_lat, _ = measure.timed_search(measure.faiss_search(index, k * spec.rerank), q, args.single)
            emit(
                {
                    "index": f"GalleryIndex auto ({spec.factory_string()}, {knob} {value}, {k * spec.rerank} re-scored)",
                    "spec": spec.to_dict(),
                    knob: value,
                    "build_s": round(build, 2),
                    "index_bytes": measure.index_file_bytes(index),
                    "batch1": lat,
                    "index_alone_batch1": raw_lat,
                    "recall_at_10": measure.recall_at_k(ids, truth),
                }
            )
        del g
        gc.collect()

    for m_hnsw, storage in [(m, s) for m in args.hnsw_m for s in args.hnsw_storage]:
        before = measure.rss_bytes()
        t = time.perf_counter()
        if storage == "fp16":  # the graph's copy of the vectors in float16: half the bytes read per distance
            h = faiss.IndexHNSWSQ(gen.dim, faiss.ScalarQuantizer.QT_fp16, m_hnsw, faiss.METRIC_INNER_PRODUCT)
        else:
            h = faiss.IndexHNSWFlat(gen.dim, m_hnsw, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = args.ef_construction
        h.add(x)
        build = time.perf_counter() - t
        h_bytes, delta = measure.index_file_bytes(h), measure.rss_bytes() - before
        for ef in args.ef_search:
            h.hnsw.efSearch = ef
            lat, ids = measure.timed_search(measure.faiss_search(h, k), q, args.single)
            emit(
                {
                    "index": f"HNSW{m_hnsw}{',SQfp16' if storage == 'fp16' else ''} efSearch={ef}",
                    "hnsw_m": m_hnsw,
                    "hnsw_storage": storage,
                    "ef_search": ef,
                    "ef_construction": args.ef_construction,
                    "build_s": round(build, 2),
                    "index_bytes": h_bytes,
                    "rss_delta_bytes": delta,
                    "batch1": lat,
                    "recall_at_10": measure.recall_at_k(ids, truth),
                }
            )
        del h
        gc.collect()
    print(measure.markdown(rows))
    return result


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
    speed.add_argument(
        "--hnsw-storage",
        type=lambda v: [x for x in v.split(",") if x.strip()],
        default=["flat"],
        help="vectors inside the HNSW graph: flat (float32), fp16 (comma-separated for both)",
    )
    speed.add_argument("--gallery", action="store_true", help="also time GalleryIndex.search with its automatic index")
    speed.add_argument("--gallery-knob", type=ints, default=[], help="--gallery: nprobe (IVF) or efSearch (HNSW) values to sweep")
    for name in ("speed", "sim"):
        sub.choices[name].add_argument("--pq-bits", type=int, choices=(4, 8), default=8, help="4: fast-scan PQ")
    sub.choices["sim"].add_argument(
        "--implem", type=int, default=15, help="fast-scan search implementation (faiss; 15: one query over both cores)"
    )
    sub.choices["sim"].add_argument("--rerank-store", default=None, help="float16 vectors file for re-ranking (outside the repo)")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
