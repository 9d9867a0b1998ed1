"""GalleryIndex on disk: save/load round trips, atomic replacement, corrupt and missing files, crashes while
saving, and the dimension / model_id checks of load.

Synthetic clustered vectors only (tests/gallery_helpers.py), single faiss thread.
"""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from model_pkg import fileio
from model_pkg.gallery import GalleryFileError, GalleryIndex, GalleryMismatchError
from tests.gallery_helpers import DIM, build, files_bytes, one_faiss_thread, registered_world

_one_faiss_thread = pytest.fixture(autouse=True, scope="module")(one_faiss_thread)
world = pytest.fixture(scope="module", name="world")(registered_world)


# --------------------------------------------------------------------------- #
# save / load
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("approximate", [False, True])
def test_save_load_round_trip(world, tmp_path, approximate):
    g = build(world, score_threshold=0.5, margin_threshold=0.1, ef_search=50)
    if approximate:
        g.build_approximate()
    out = tmp_path / "gallery"
    g.save(out)
    assert sorted(os.listdir(out)) == ["gallery.json", "index.faiss", "vectors.npy"]
    meta = json.loads((out / "gallery.json").read_text())
    assert set(meta["sha256"]) == {"index.faiss", "vectors.npy"} and meta["model_id"] == "test-embedder@abc"
    h = GalleryIndex.load(out, expected_dim=DIM, expected_model_id="test-embedder@abc")
    assert h.is_approximate == approximate and h.ef_search == 50
    assert (h.labels, h.ids, h.metadata, h.score_threshold, h.margin_threshold) == (g.labels, g.ids, g.metadata, 0.5, 0.1)
    q = np.random.default_rng(2).standard_normal((6, DIM)).astype(np.float32)
    a, b = g.search(q, k=8), h.search(q, k=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    assert [p.to_dict() for p in g.classify(q)] == [p.to_dict() for p in h.classify(q)]
    np.testing.assert_array_equal(h.vectors, g.vectors)
    assert h.add(world[1][:1], ["new"]) == ["150"]  # running ids continue after load


def test_save_replaces_existing_gallery_atomically(world, tmp_path):
    out = tmp_path / "g"
    build(world).save(out)
    g2 = GalleryIndex(DIM, model_id="v2")
    g2.add(world[1][:3], ["a", "b", "c"])
    g2.save(out)
    assert GalleryIndex.load(out).labels == ["a", "b", "c"]
    assert sorted(os.listdir(tmp_path)) == ["g"]  # no temporary or backup folder left


def test_save_refuses_folder_with_other_files(world, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="own folder"):
        build(world).save(tmp_path)
    assert os.listdir(tmp_path) == ["config.json"]


def test_corrupt_index_file_clear_error_files_untouched(world, tmp_path):
    out = tmp_path / "g"
    build(world).save(out)
    raw = bytearray((out / "index.faiss").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (out / "index.faiss").write_bytes(bytes(raw))
    before = files_bytes(out)
    with pytest.raises(GalleryFileError, match=r"index file .* is corrupt \(checksum mismatch\): restore it or rebuild"):
        GalleryIndex.load(out)
    assert files_bytes(out) == before


def test_truncated_vectors_and_missing_files(world, tmp_path):
    out = tmp_path / "g"
    build(world).save(out)
    data = (out / "vectors.npy").read_bytes()
    (out / "vectors.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(GalleryFileError, match="vectors file .* corrupt"):
        GalleryIndex.load(out)
    (out / "vectors.npy").unlink()
    with pytest.raises(GalleryFileError, match="missing vectors.npy"):
        GalleryIndex.load(out)
    with pytest.raises(GalleryFileError, match="does not exist"):
        GalleryIndex.load(tmp_path / "nowhere")


def test_crash_while_writing_keeps_previous_gallery(world, tmp_path, monkeypatch):
    out = tmp_path / "g"
    good = build(world)
    good.save(out)
    before = files_bytes(out)
    other = GalleryIndex(DIM, model_id="test-embedder@abc")
    other.add(world[1][:2], ["x", "y"])

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="simulated"):
        other.save(out)
    monkeypatch.undo()
    assert files_bytes(out) == before
    assert sorted(os.listdir(tmp_path)) == ["g"]
    assert GalleryIndex.load(out).labels == good.labels


def test_crash_during_swap_rolls_back_or_recovers(world, tmp_path, monkeypatch):
    """Platforms without an atomic exchange: two renames; a failure between them never loses the gallery."""
    out = tmp_path / "g"
    good = build(world)
    good.save(out)
    before = files_bytes(out)
    other = GalleryIndex(DIM)
    other.add(world[1][:2], ["x", "y"])
    monkeypatch.setattr(fileio, "_rename_exchange", lambda a, b: False)
    real_rename = os.rename

    # 1) the second rename fails once: rolled back at once
    calls = []

    def fail_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("crash between renames (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", fail_second)
    with pytest.raises(OSError, match="simulated"):
        other.save(out)
    monkeypatch.setattr(os, "rename", real_rename)
    assert files_bytes(out) == before and sorted(os.listdir(tmp_path)) == ["g"]

    # 2) hard crash after moving the old gallery aside (no rollback possible): load() restores it
    calls.clear()

    def die_after_first(src, dst):
        calls.append(src)
        if len(calls) >= 2:
            raise OSError("process killed (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", die_after_first)
    with pytest.raises(OSError, match="simulated"):
        other.save(out)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not out.exists()
    with pytest.warns(RuntimeWarning, match="interrupted save"):
        h = GalleryIndex.load(out)
    assert h.labels == good.labels and files_bytes(out) == before

    # 3) the fallback path itself works
    other.save(out)
    assert GalleryIndex.load(out).labels == ["x", "y"] and sorted(os.listdir(tmp_path)) == ["g"]


def test_load_dim_and_model_id_mismatch(world, tmp_path):
    out = tmp_path / "g"
    build(world).save(out)
    with pytest.raises(GalleryMismatchError, match=r"32-dimensional.*768-dimensional.*another embedder"):
        GalleryIndex.load(out, expected_dim=768)
    with pytest.raises(GalleryMismatchError, match=r"'test-embedder@abc'.*'other-model@123'.*rebuild"):
        GalleryIndex.load(out, expected_model_id="other-model@123")
    with pytest.raises(ValueError):  # GalleryMismatchError is a ValueError
        GalleryIndex.load(out, expected_model_id="other-model@123")
