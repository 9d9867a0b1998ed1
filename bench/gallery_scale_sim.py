"""The ``sim`` step of bench_gallery_scale.py: IVF-PQ on 10M vectors that never all sit in memory.

The vectors are generated chunk by chunk (:class:`gallery_vectors.DogEmbeddingGenerator`); each chunk is
added to every IVF-PQ index (one shared coarse quantizer, one index per PQ size), optionally copied as
float16 to a file on disk for exact re-ranking, and merged into the queries' exact top 10, so recall is
measured against the true neighbours without a 10M x d matrix in RAM. Separate from the in-memory ``speed``
step because its whole loop is built around that constraint.
"""

from __future__ import annotations

import json
import os
import sys
import time

import faiss
import gallery_measure as measure
import numpy as np
from gallery_vectors import CHUNK, DogEmbeddingGenerator, load_stats

from model_pkg import vector_index as vi
from model_pkg.fileio import atomic_write_json


def ivf_pq(quantizer: faiss.Index, dim: int, nlist: int, m: int, bits: int) -> faiss.Index:
    """IVF-PQ with ``m`` sub-quantizers of ``bits`` bits on the shared ``quantizer``; 4 bits = faiss's fast-scan
    layout (codes in blocks of 32 scanned with SIMD lookups, several times faster per code than 8 bits)."""
    if bits == 4:
        return faiss.IndexIVFPQFastScan(quantizer, dim, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, bits, faiss.METRIC_INNER_PRODUCT)
    index.do_polysemous_training = False
    vi.configure_pq_training(index)
    return index


def cmd_sim(args) -> dict:
    """``bench_gallery_scale.py sim``: IVF-PQ indexes filled chunk by chunk, recall against a chunked exact search."""
    k = 10
    gen = DogEmbeddingGenerator(load_stats(args.stats), args.size, seed=args.seed)
    q = gen.queries(args.queries)
    config = {k_: v for k_, v in vars(args).items() if k_ not in ("json", "func")}
    config["rerank_store"] = os.path.basename(args.rerank_store) if args.rerank_store else None  # no machine paths in results
    result = {"config": config, "machine": measure.machine_info(), "results": []}
    start_rss = measure.rss_bytes()
    # training sample: fresh dogs from the same generator (another seed), never the indexed vectors themselves
    train_n = max(args.nlist * vi.TRAIN_POINTS_PER_CELL, 256 * 40)
    t0 = time.perf_counter()
    sample = DogEmbeddingGenerator(load_stats(args.stats), train_n, seed=args.seed + 1000).all()
    quantizer = faiss.IndexFlatIP(gen.dim)
    fast_scan = args.pq_bits == 4
    indexes = {m: ivf_pq(quantizer, gen.dim, args.nlist, m, args.pq_bits) for m in args.pq_m}
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
        xids = np.arange(lo, lo + len(x), dtype=np.int64)
        if fast_scan:  # add_core with precomputed cells crashes fast-scan indexes (faiss 1.15): each assigns itself
            t = time.perf_counter()
            for index in indexes.values():
                index.add_with_ids(x, xids)
            t_assign += time.perf_counter() - t
            t = time.perf_counter()
        else:  # one assignment to the shared cells, then the codes of every index
            t = time.perf_counter()
            assign = quantizer.search(x, 1)[1].ravel()
            t_assign += time.perf_counter() - t
            t = time.perf_counter()
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
    if store is not None:  # reopened read-only, as a deployment opens it: pages of the writable map fault slowly
        store.flush()
        del store
        store = np.load(args.rerank_store, mmap_mode="r")
    result["timing_s"] = {
        "train": round(train_s, 1),
        "generate": round(t_gen, 1),
        "exact_truth": round(t_truth, 1),
        "assign": round(t_assign, 1),  # fast scan: assignment and encoding together
        "add_codes": round(t_add, 1),
    }
    result["rss_bytes_all_indexes"] = measure.rss_bytes() - start_rss
    rows = result["results"]
    for m, index in indexes.items():
        nbytes = measure.index_file_bytes(index)
        for nprobe in args.nprobe:
            index.nprobe = nprobe
            if fast_scan:
                index.implem = args.implem
            factors = [1] + ([f for f in args.rerank if f > 1] if store is not None else [])
            for factor in factors:
                search = measure.faiss_search(index, k) if factor == 1 else measure.reranked_search(index, store, k, factor)
                # twice: the first pass reads what the page cache lacks of the float16 copy from disk, the second
                # is the steady state of a store that fits in RAM
                first, _ = measure.timed_search(search, q, args.single)
                lat, ids = measure.timed_search(search, q, args.single)
                row = {
                    "index": f"IVF{args.nlist},PQ{m}"
                    + ("x4fs" if fast_scan else "")
                    + (f" + re-rank of {factor * k} from float16 on disk" if factor > 1 else ""),
                    "nlist": args.nlist,
                    "nprobe": nprobe,
                    "pq_m": m,
                    "pq_bits": args.pq_bits,
                    "rerank": factor,
                    "index_bytes": nbytes,
                    "rerank_store_bytes": int(args.size * gen.dim * 2) if factor > 1 else 0,
                    "batch1": lat,
                    "batch1_first_pass": first,
                    "recall_at_10": measure.recall_at_k(ids, best_i),
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                atomic_write_json(result, args.json)
    print(measure.markdown(rows))
    return result
