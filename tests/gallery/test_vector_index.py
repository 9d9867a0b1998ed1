"""vector_index: the size-based index choice, exact re-ranking, and `gallery build` from sharded embeddings.

Synthetic clustered vectors, one faiss thread; the embeddings folders are written with model_pkg.embedding_store's
shard writer, so no model runs here (tests/gallery/test_embed.py covers embedding photos).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from model_pkg import embedding_store
from model_pkg import vector_index as vi

DIM = 32
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n_ids: int, per_id: int, seed: int = 0, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, DIM))
    idx = np.repeat(np.arange(n_ids), per_id)
    x = centres[idx] / np.sqrt(DIM) + noise / np.sqrt(DIM) * rng.standard_normal((idx.size, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), idx


def write_embeddings(folder: Path, x: np.ndarray, labels: np.ndarray, shard: int = 5000) -> list[str]:
    """An embeddings folder as `python -m model_pkg.embed` writes it (shards + manifest)."""
    folder.mkdir(parents=True)
    ids = [f"photo{i:06d}.jpg" for i in range(len(x))]
    for start in range(0, len(x), shard):
        part = ids[start : start + shard]
        embedding_store.write_shard(
            folder / embedding_store.shard_name(part),
            part,
            [f"dog{v}" for v in labels[start : start + shard]],
            x[start : start + shard],
            [],
        )
    base = {
        "format": embedding_store.FORMAT,
        "version": 1,
        "model_id": "test:0123",
        "model": "tiny",
        "dim": DIM,
        "source": "synthetic",
    }
    embedding_store.write_manifest(folder, base, len(x))
    return ids


# --------------------------------------------------------------------------- #
# choice and specs
# --------------------------------------------------------------------------- #
def test_choose_spec_by_size():
    assert vi.choose_spec(vi.EXACT_MAX, 512).kind == "flat"
    assert vi.choose_spec(vi.EXACT_MAX + 1, 512).kind == "hnsw"
    assert vi.choose_spec(vi.IVF_MIN - 1, 512).rerank == 1  # nothing to re-score from without the float vectors
    small = vi.choose_spec(vi.IVF_MIN - 1, 512, exact_vectors_kept=True)  # a gallery keeps its float vectors
    assert small.factory_string() == "HNSW32,SQfp16" and small.rerank == vi.HNSW_RERANK
    # from IVF_MIN: fast-scan IVF-PQ, dim/2 4-bit codes; a gallery (float vectors in RAM) scans more cells of
    # finer cells and re-scores fewer candidates than `gallery build` (a float16 copy on disk)
    kept = vi.choose_spec(1_000_000, 512, exact_vectors_kept=True)
    assert kept.factory_string() == "IVF2048,PQ256x4fs" and kept.nprobe == 192 and kept.rerank == vi.GALLERY_RERANK
    built = vi.choose_spec(10_000_000, 512)
    assert built.factory_string() == "IVF4096,PQ256x4fs" and built.nprobe == 256 and built.rerank == vi.BUILD_RERANK
    assert built.code_bytes(512) == 128  # 10M vectors: 1.3 GB of codes
    assert vi.choose_spec(1_000_000, 100).pq_m == 50  # a divisor of the dimension
    # never more cells than the vectors can train
    assert vi.choose_spec(vi.IVF_MIN, 512).nlist * vi.TRAIN_POINTS_PER_CELL <= vi.IVF_MIN
    assert vi.train_sample_size(kept, 1_000_000) == 2048 * vi.TRAIN_POINTS_PER_CELL
    assert vi.train_sample_size(vi.IndexSpec("ivf_pq", nlist=32768, pq_m=64), 100_000_000) == 32768 * 40  # >= 39 per cell


def test_spec_for_build_named_kinds_and_on_disk():
    assert vi.spec_for_build("ivf_pq", 50_000, 512).fast_scan  # asked for by name: whatever the size
    flat = vi.spec_for_build("ivf_flat", 1_000_000, 512)
    assert flat.factory_string() == "IVF4096,Flat" and flat.rerank == 1
    # on-disk inverted lists hold plain codes, not fast-scan blocks: 8-bit PQ, dim/4 bytes
    disk = vi.spec_for_build("auto", 10_000_000, 512, on_disk=True)
    assert disk.factory_string() == "IVF16384,PQ128" and disk.rerank == vi.RERANK_FROM_DISK
    custom = vi.spec_for_build("auto", 10_000_000, 512, nlist=1024, nprobe=8, pq_m=64, rerank_factor=3)
    assert (custom.nlist, custom.nprobe, custom.pq_m, custom.rerank, custom.pq_bits) == (1024, 8, 64, 3, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "lsh"}, "index kind"),
        ({"kind": "ivf_flat"}, "needs nlist"),
        ({"kind": "ivf_pq", "nlist": 16}, "needs pq_m"),
        ({"kind": "hnsw", "hnsw_m": 0}, "hnsw_m must be"),
        ({"kind": "flat", "rerank": 0}, "rerank must be"),
        ({"kind": "ivf_pq", "nlist": 16, "pq_m": 8, "pq_bits": 6}, "pq_bits must be"),
    ],
)
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(vi.VectorIndexError, match=message):
        vi.IndexSpec(**kwargs)


@pytest.mark.parametrize(("kind", "bits"), [(kind, 8) for kind in vi.KINDS] + [("ivf_pq", 4)])
def test_build_index_kinds_find_the_vectors_themselves(kind, bits):
    x, _ = clustered(300, 4, seed=1)
    spec = vi.IndexSpec(kind, nlist=16, nprobe=16, pq_m=8, hnsw_m=16, ef_search=64, ef_construction=40, pq_bits=bits)
    index = vi.build_index(x, spec)
    assert vi.kind_of(index) == kind and index.ntotal == len(x)
    _, pos = index.search(x[:50], 10)
    if kind == "ivf_pq":  # lossy 8-byte (4-byte) codes: the vector itself is among the first 10, not always first
        assert (pos == np.arange(50)[:, None]).any(axis=1).mean() >= 0.9
    else:
        assert (pos[:, 0] == np.arange(50)).all()


def test_ivf_needs_enough_training_vectors():
    with pytest.raises(vi.VectorIndexError, match="needs at least"):
        vi.build_index(np.eye(DIM, dtype=np.float32), vi.IndexSpec("ivf_flat", nlist=64))


def test_rerank_is_exact_on_its_candidates():
    x, _ = clustered(200, 5, seed=2)
    q = x[:20] + 0.01
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    exact_d, exact_i = flat.search(q, 10)
    everyone = np.tile(np.arange(len(x)), (len(q), 1))
    d, i = vi.rerank(x, q, everyone, 10)
    np.testing.assert_array_equal(i, exact_i)
    np.testing.assert_allclose(d, exact_d, rtol=1e-5, atol=1e-6)
    missing = np.full((len(q), 3), -1)
    missing[:, 0] = 7
    _, i = vi.rerank(x, q, missing, 2)  # -1 = no candidate: stays -1, never a made-up neighbour
    assert (i[:, 0] == 7).all() and (i[:, 1] == -1).all()
    _, i2 = vi.rerank(x, q, everyone, 5, metric="l2")
    l2 = faiss.IndexFlatL2(DIM)
    l2.add(x)
    np.testing.assert_array_equal(i2, l2.search(q, 5)[1])
    # the same from the faiss index holding the vectors (a gallery's), and from a float16 copy (gallery build's)
    for vectors, metric, index in ((flat, "ip", flat), (l2, "l2", l2), (x.astype(np.float16), "ip", flat)):
        d3, i3 = vi.rerank(vectors, q, missing, 2, metric=metric)
        assert (i3[:, 0] == 7).all() and (i3[:, 1] == -1).all()
        d3, i3 = vi.rerank(vectors, q, everyone, 5, metric=metric)
        want_d, want_i = index.search(q, 5)
        assert (i3 == want_i).mean() > 0.97  # float16 may swap near-ties
        np.testing.assert_allclose(d3, want_d, rtol=1e-2 if vectors.__class__ is np.ndarray else 1e-5, atol=1e-3)


def test_pq_with_rerank_beats_pq_alone():
    x, _ = clustered(2000, 5, seed=3)
    q, _ = clustered(2000, 1, seed=3)  # the same centres (same seed), a fresh photo each
    q = q[:200]
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    truth = flat.search(q, 10)[1]
    index = vi.build_index(x, vi.IndexSpec("ivf_pq", nlist=64, nprobe=64, pq_m=4))
    alone = index.search(q, 10)[1]
    reranked = vi.rerank(x, q, index.search(q, 80)[1], 10)[1]

    def recall(ids):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])

    assert recall(reranked) > 0.85 and recall(alone) < recall(reranked) - 0.1, (recall(reranked), recall(alone))


# --------------------------------------------------------------------------- #
# gallery build from sharded embeddings
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    x, idx = clustered(3000, 4, seed=4)  # 12,000 vectors in 3 shards
    folder = tmp_path_factory.mktemp("emb") / "dogs"
    ids = write_embeddings(folder, x, idx)
    return folder, x, ids


@pytest.mark.parametrize("on_disk", [False, True])
def test_build_from_embeddings_and_search(embeddings, tmp_path, on_disk):
    folder, x, ids = embeddings
    meta = vi.build_from_embeddings(
        folder, tmp_path / "index", kind="ivf_pq", nlist=64, nprobe=64, pq_m=16, on_disk=on_disk, log=lambda *_: None
    )
    assert meta["num_vectors"] == len(x) and meta["model_id"] == "test:0123" and meta["on_disk"] == on_disk
    files = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert files == sorted([vi.INDEX_FILE, vi.IDS_FILE, vi.META_FILE, vi.VECTORS_FILE] + ([vi.LISTS_FILE] if on_disk else []))
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "index", moved)  # an on-disk index finds its lists next to index.faiss wherever it goes
    index = vi.VectorIndex.load(moved)
    assert len(index) == len(x) and index.nprobe == 64
    scores, found, labels = index.search(x[:100], k=5)
    assert [row[0] for row in found] == ids[:100]  # PQ candidates re-scored with the float16 copy: itself first
    # in memory: fast-scan codes; on disk (faiss's on-disk lists hold plain codes): 8-bit codes
    assert index.spec.fast_scan != on_disk
    assert index.spec.rerank == (vi.RERANK_FROM_DISK if on_disk else vi.BUILD_RERANK)
    assert labels[0][0] == "dog0" and scores.shape == (100, 5) and (np.diff(scores, axis=1) <= 1e-6).all()


def test_build_without_rerank_copy(embeddings, tmp_path):
    folder, x, ids = embeddings
    meta = vi.build_from_embeddings(
        folder, tmp_path / "index", kind="ivf_pq", nlist=64, pq_m=16, rerank_factor=1, log=lambda *_: None
    )
    assert not meta["rerank_vectors"] and not (tmp_path / "index" / vi.VECTORS_FILE).exists()
    _, found, _ = vi.VectorIndex.load(tmp_path / "index").search(x[:100], k=5)
    assert np.mean([ids[i] in row for i, row in enumerate(found)]) > 0.95  # lossy codes: itself among the first 5


def test_build_auto_small_collection_is_exact(embeddings, tmp_path):
    folder, x, ids = embeddings
    meta = vi.build_from_embeddings(folder, tmp_path / "index", log=lambda *_: None)
    assert meta["spec"]["kind"] == "flat"  # 12,000 vectors: an exact scan is fast enough
    _, found, _ = vi.VectorIndex.load(tmp_path / "index").search(x[:20], k=1)
    assert [row[0] for row in found] == ids[:20]


def test_built_index_checks_its_files(embeddings, tmp_path):
    folder, _, _ = embeddings
    vi.build_from_embeddings(folder, tmp_path / "index", kind="ivf_flat", nlist=32, log=lambda *_: None)
    ids_file = tmp_path / "index" / vi.IDS_FILE
    ids_file.write_bytes(ids_file.read_bytes()[:-10])
    with pytest.raises(vi.VectorIndexError, match="corrupt"):
        vi.VectorIndex.load(tmp_path / "index")
    with pytest.raises(vi.VectorIndexError, match="not a vector index folder"):
        vi.VectorIndex.load(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(vi.VectorIndexError, match="not a vector index folder"):
        vi.build_from_embeddings(folder, tmp_path / "other", kind="flat", log=lambda *_: None)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"  # never replaced


def test_gallery_build_command_line(embeddings, tmp_path):
    folder, _, _ = embeddings
    out = tmp_path / "index"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_pkg.gallery",
            "build",
            "--embeddings",
            str(folder),
            "--out",
            str(out),
            "--index",
            "ivf_flat",
            "--nlist",
            "32",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    meta = json.loads((out / vi.META_FILE).read_text())
    assert meta["factory"] == "IVF32,Flat" and meta["num_vectors"] == 12_000
    bad = subprocess.run(
        [sys.executable, "-m", "model_pkg.gallery", "build", "--embeddings", str(tmp_path / "none"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_parts_searched_together_match_one_index(embeddings, tmp_path):
    folder, x, ids = embeddings
    whole = vi.build_from_embeddings(folder, tmp_path / "whole", kind="flat", log=lambda *_: None)
    sizes = []
    for i in range(2):  # 3 shards: part 0 holds the first and the third, part 1 the second
        meta = vi.build_from_embeddings(folder, tmp_path / f"part{i}", kind="flat", part=(i, 2), log=lambda *_: None)
        sizes.append(meta["num_vectors"])
    assert sum(sizes) == whole["num_vectors"] == 12_000 and min(sizes) > 0
    parts = [vi.VectorIndex.load(tmp_path / f"part{i}") for i in range(2)]
    q = x[::600]
    s_whole, i_whole, _ = vi.VectorIndex.load(tmp_path / "whole").search(q, k=8)
    s_parts, i_parts, _ = vi.search_parts(parts, q, k=8)
    assert i_parts == i_whole
    np.testing.assert_allclose(s_parts, s_whole, rtol=1e-6)
    with pytest.raises(Exception, match="part must be"):
        vi.build_from_embeddings(folder, tmp_path / "bad", kind="flat", part=(2, 2), log=lambda *_: None)
