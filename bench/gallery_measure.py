"""Timing, memory and recall measurements shared by the ``speed`` and ``sim`` steps of bench_gallery_scale.py.

Latency is one query per call (batch 1), median (p50) and p90; memory is the resident-set growth and the
size faiss writes; recall@10 is the overlap of the top 10 with exact search's top 10. Separate from the two
steps because both must measure the same way for their tables to be comparable.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import faiss
import numpy as np
import psutil

from model_pkg import vector_index as vi


def _stats(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"p50_ms": round(statistics.median(s), 4), "p90_ms": round(s[int(0.9 * (len(s) - 1))], 4), "runs": len(s)}


def rss_bytes() -> int:
    """Resident memory of this process after a garbage collection (differences of it give an index's RAM)."""
    gc.collect()
    return psutil.Process().memory_info().rss


def index_file_bytes(index: faiss.Index) -> int:
    """Size of ``index`` as faiss writes it to disk."""
    with tempfile.NamedTemporaryFile(suffix=".faiss") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name)


def recall_at_k(ids: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean overlap of each row's top ``k`` ids with exact search's top ``k``."""
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
    """queries -> the top ``k`` ids of ``index``."""
    return lambda qq: index.search(qq, k)[1]


def reranked_search(index: faiss.Index, vectors: np.ndarray, k: int, factor: int) -> Callable[[np.ndarray], np.ndarray]:
    """queries -> the top ``k`` ids after exact re-ranking of ``index``'s top ``factor * k`` against ``vectors``."""

    def run(qq):
        _, cand = index.search(qq, k * factor)
        return vi.rerank(vectors, qq, cand, k)[1]

    return run


def machine_info() -> dict:
    """The machine and library versions a result was measured with (stored with every result file)."""
    return {
        "cpu_count": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "platform": platform.platform(),
        "faiss_version": getattr(faiss, "__version__", None),
        "numpy_version": np.__version__,
        "total_memory_bytes": psutil.virtual_memory().total,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def markdown(rows: list[dict]) -> str:
    """The result rows of ``speed`` or ``sim`` as the markdown table bench/README.md shows."""
    lines = ["| index | nprobe / ef | build s | index MB | p50 ms | p90 ms | recall@10 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        knob = r.get("nprobe", r.get("ef_search", "-"))
        build = f"{r['build_s']:.1f}" if "build_s" in r else "-"
        lines.append(
            f"| {r['index']} | {knob} | {build} | {r['index_bytes'] / 2**20:,.0f} | {r['batch1']['p50_ms']:.3f} | "
            f"{r['batch1']['p90_ms']:.3f} | {r['recall_at_10']:.3f} |"
        )
    return "\n".join(lines)
