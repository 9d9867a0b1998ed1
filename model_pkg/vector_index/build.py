"""``python -m model_pkg.gallery build``: a :class:`~.index_folder.VectorIndex` folder built from the sharded
embeddings of ``python -m model_pkg.embed`` (:func:`build_from_embeddings`; the command line is
``model_pkg/gallery/__main__.py``).

Separate from searching (``index_folder``) because building streams shards from disk, trains on a sample,
plans memory (on-disk inverted lists) and swaps the finished folder in atomically; none of that is needed
to search a built index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..fileio import sha256_file, swap_folder
from .faiss_index import make_index, train
from .index_folder import FORMAT, IDS_FILE, INDEX_FILE, LISTS_FILE, META_FILE, VECTORS_FILE
from .spec import VectorIndexError, spec_for_build, train_sample_size

__all__ = ["build_from_embeddings"]


def _training_sample(emb_dir: Path, n: int, size: int, seed: int, part: tuple[int, int] | None) -> np.ndarray:
    from ..embedding_store import iter_embeddings

    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).choice(n, size=size, replace=False)] = True
    parts, start = [], 0
    for ids, _, vec in iter_embeddings(emb_dir, verify=False, part=part):
        parts.append(vec[chosen[start : start + len(ids)]])
        start += len(ids)
    return np.concatenate(parts)


def build_from_embeddings(
    embeddings: str | os.PathLike,
    out: str | os.PathLike,
    kind: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    on_disk: bool | None = None,
    max_memory_gb: float | None = None,
    seed: int = 0,
    log=print,
    rerank_factor: int | None = None,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Build a :class:`VectorIndex` folder from an embeddings folder (``model_pkg.embed``); returns its metadata.

    ``kind``, ``nlist``, ``nprobe``, ``pq_m``, ``rerank_factor``: see :func:`~.spec.spec_for_build` (``"auto"``:
    fast-scan IVF-PQ from 100,000 vectors, re-ranked from a float16 copy).  ``on_disk=None``: on-disk inverted
    lists when the index would not fit ``max_memory_gb`` (default: half the machine's memory).  With a
    ``rerank_factor`` > 1 a float16 copy of the vectors is written next to the index to re-score the PQ
    candidates with.  ``part`` = (i, S): index only every S-th shard starting at the i-th, one of S parts
    searched together with :func:`search_parts` (e.g. one part per machine)."""
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..embedding_store import iter_embeddings, part_shards, read_manifest

    start_time = time.perf_counter()
    emb_dir, target = Path(embeddings), Path(os.path.abspath(os.fspath(out)))
    manifest = read_manifest(emb_dir)
    n, dim = sum(int(e["rows"]) for e in part_shards(manifest, part)), int(manifest["dim"])
    if n == 0:
        raise VectorIndexError(f"{str(emb_dir)!r} holds no embeddings: nothing to index")
    budget = int((max_memory_gb * 2**30) if max_memory_gb else psutil.virtual_memory().total // 2)
    spec = spec_for_build(kind, n, dim, nlist, nprobe, pq_m, rerank_factor)
    if on_disk is None:
        on_disk = spec.needs_training and n * (spec.code_bytes(dim) + 8) > budget
    if on_disk:
        spec = spec_for_build(kind, n, dim, nlist, nprobe, pq_m, rerank_factor, on_disk=True)
    if on_disk and not spec.needs_training:
        raise VectorIndexError(f"on-disk inverted lists need an IVF index, not {spec.kind}")
    log(f"{n:,} vectors of dim {dim}: {spec.factory_string()} (nprobe {spec.nprobe}), on_disk={on_disk}")

    if target.exists() and not (target / META_FILE).is_file():  # checked before the build, not after it
        raise VectorIndexError(f"{str(target)!r} exists and is not a vector index folder: choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        index = make_index(spec, dim, manifest.get("metric", "ip"))
        t0 = time.perf_counter()
        if spec.needs_training:
            size = train_sample_size(spec, n)
            train(index, _training_sample(emb_dir, n, size, seed, part), seed)
            log(f"trained on {size:,} vectors in {time.perf_counter() - t0:.1f} s")
        ids: list[str] = []
        labels: list[str] = []
        blocks = []
        store = np.lib.format.open_memmap(tmp / VECTORS_FILE, "w+", np.float16, (n, dim)) if spec.rerank > 1 else None
        t0 = time.perf_counter()
        for i, (shard_ids, shard_labels, vec) in enumerate(iter_embeddings(emb_dir, part=part)):
            xids = np.arange(len(ids), len(ids) + len(shard_ids), dtype=np.int64)
            if on_disk:  # each shard into its own copy of the trained index, merged below
                block = faiss.clone_index(index)
                block.add_with_ids(vec, xids)
                blocks.append(str(tmp / f"block{i:05d}.index"))
                faiss.write_index(block, blocks[-1])
                del block
            elif spec.needs_training:
                index.add_with_ids(vec, xids)
            else:
                index.add(vec)
            if store is not None:
                store[len(ids) : len(ids) + len(shard_ids)] = vec
            ids.extend(shard_ids)
            labels.extend(shard_labels)
        if on_disk:
            from faiss.contrib.ondisk import merge_ondisk

            merge_ondisk(index, blocks, str(tmp / LISTS_FILE))
            for block_file in blocks:
                os.unlink(block_file)
        if store is not None:
            store.flush()
            del store
        log(f"added {len(ids):,} vectors in {time.perf_counter() - t0:.1f} s")
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "label": pa.array(labels, pa.string())}), tmp / IDS_FILE)
        meta = {
            "format": FORMAT,
            "version": 1,
            "spec": spec.to_dict(),
            "factory": spec.factory_string(),
            "metric": manifest.get("metric", "ip"),
            "dim": dim,
            "num_vectors": len(ids),
            "part": list(part) if part else None,
            "model_id": manifest.get("model_id"),
            "on_disk": bool(on_disk),
            "rerank_vectors": spec.rerank > 1,
            "lists_bytes": (tmp / LISTS_FILE).stat().st_size if on_disk else None,
            "index_bytes": (tmp / INDEX_FILE).stat().st_size,
            "build_seconds": round(time.perf_counter() - start_time, 3),
            "faiss_version": getattr(faiss, "__version__", None),
            "sha256": {INDEX_FILE: sha256_file(tmp / INDEX_FILE), IDS_FILE: sha256_file(tmp / IDS_FILE)},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        swap_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {target} in {meta['build_seconds']} s")
    return meta
