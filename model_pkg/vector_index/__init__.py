"""Which faiss index a gallery of a given size uses, how it is built, and `python -m model_pkg.gallery build`.

Kinds (:class:`IndexSpec`, faiss ``index_factory`` strings):

* ``flat`` -- exact search (``Flat``); every query scans every vector.
* ``hnsw`` -- ``HNSW<M>`` graph (``HNSW<M>,SQfp16`` with ``storage="fp16"``, the default: the graph's copy of
  the vectors in float16, half the bytes per distance); no training, slow to build (8 minutes per million 512-d vectors
  on 2 cores),
  memory = vectors (float16) + graph; ``rerank`` > 1 re-scores the candidates exactly, as below.
* ``ivf_flat`` -- ``IVF<nlist>,Flat``: k-means cells, a query scans ``nprobe`` cells; memory = vectors.
* ``ivf_pq`` -- ``IVF<nlist>,PQ<m>``: the same cells holding ``m``-byte product-quantised codes (64 bytes
  instead of 2048 for a 512-d vector), or with ``pq_bits=4`` ``IVF<nlist>,PQ<m>x4fs``: ``m`` 4-bit codes in
  faiss's fast-scan layout (blocks of 32 vectors scanned with SIMD table lookups, several times faster per
  vector; the automatic choice from 100,000 vectors); with ``rerank`` > 1 the ``k * rerank`` best candidates
  are re-scored exactly against the float vectors when they are at hand (a
  :class:`~model_pkg.gallery.GalleryIndex` keeps them; ``gallery build`` writes a float16 copy), which brings
  recall back to that of IVF-Flat at a fraction of its memory.

:func:`choose_spec` picks the kind and its parameters from the number of vectors; the thresholds and
numbers come from ``bench/bench_gallery_scale.py`` (``bench/README.md``, "Scale"). IVF
indexes are trained on a random sample (:func:`train_sample_size`), never on all vectors.

``python -m model_pkg.gallery build --embeddings DIR --out DIR`` reads the shards written by
``python -m model_pkg.embed`` one at a time, trains an IVF index on a sample, adds the shards, and saves a
:class:`VectorIndex` folder atomically. With ``--on-disk`` (or automatically when the codes would not fit
in ``--max-memory-gb``) every shard is added to its own copy of the trained index, written out, and the
inverted lists are merged into one ``lists.ivfdata`` file that is memory-mapped when searching
(faiss ``OnDiskInvertedLists``), so the index can exceed the machine's memory.

The parts: ``spec`` (:class:`IndexSpec`, :func:`choose_spec`, :func:`spec_for_build` and the numbers behind
them), ``faiss_index`` (making, training, tuning and building faiss indexes; :func:`rerank`), ``index_folder``
(the saved folder: :class:`VectorIndex`, :func:`search_parts`), ``build`` (:func:`build_from_embeddings` and
the CLI).  Everything is importable from ``model_pkg.vector_index``; the size thresholds are read from
``model_pkg.vector_index.spec`` when a spec is chosen, so that is where to change them.
"""

from __future__ import annotations

from .build import build_from_embeddings
from .faiss_index import (
    apply_search_params,
    build_index,
    configure_pq_training,
    faiss_metric,
    kind_of,
    make_index,
    rerank,
    train,
)
from .index_folder import FORMAT, IDS_FILE, INDEX_FILE, LISTS_FILE, META_FILE, VECTORS_FILE, VectorIndex, search_parts
from .spec import (
    BUILD_RERANK,
    EXACT_MAX,
    FASTSCAN_IMPLEM,
    GALLERY_RERANK,
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    HNSW_RERANK,
    HNSW_STORAGE,
    IVF_MIN,
    IVF_MIN_TRAIN,
    IVF_NPROBE,
    KINDS,
    MAX_TRAIN,
    PQ_BYTES_PER_DIM,
    PQ_BYTES_PER_DIM_STANDALONE,
    RERANK,
    RERANK_FROM_DISK,
    TRAIN_POINTS_PER_CELL,
    IndexSpec,
    VectorIndexError,
    choose_spec,
    fast_scan_spec,
    hnsw_spec,
    nlist_for,
    pq_m_for,
    spec_for_build,
    train_sample_size,
)

__all__ = [
    "BUILD_RERANK",
    "EXACT_MAX",
    "FASTSCAN_IMPLEM",
    "FORMAT",
    "GALLERY_RERANK",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_EF_SEARCH",
    "HNSW_M",
    "HNSW_RERANK",
    "HNSW_STORAGE",
    "IDS_FILE",
    "INDEX_FILE",
    "IVF_MIN",
    "IVF_MIN_TRAIN",
    "IVF_NPROBE",
    "KINDS",
    "LISTS_FILE",
    "MAX_TRAIN",
    "META_FILE",
    "PQ_BYTES_PER_DIM",
    "PQ_BYTES_PER_DIM_STANDALONE",
    "RERANK",
    "RERANK_FROM_DISK",
    "TRAIN_POINTS_PER_CELL",
    "VECTORS_FILE",
    "IndexSpec",
    "VectorIndex",
    "VectorIndexError",
    "apply_search_params",
    "build_from_embeddings",
    "build_index",
    "choose_spec",
    "fast_scan_spec",
    "hnsw_spec",
    "configure_pq_training",
    "faiss_metric",
    "kind_of",
    "make_index",
    "nlist_for",
    "pq_m_for",
    "rerank",
    "search_parts",
    "spec_for_build",
    "train",
    "train_sample_size",
]
