import json
import os

import numpy as np
import pytest

from model_pkg.fileio import atomic_save_npy, atomic_write, atomic_write_json, atomic_write_text


def test_text_round_trip_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "note.txt"
    atomic_write_text(path, "héllo\nworld\r\n")
    assert path.read_bytes() == "héllo\nworld\r\n".encode()  # UTF-8, no newline translation
    assert os.listdir(path.parent) == ["note.txt"]


def test_json_round_trip_indent_and_trailing_newline(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"c": "d"}}
    path = tmp_path / "x.json"
    atomic_write_json(obj, str(path))
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == obj
    assert text == json.dumps(obj, indent=2) + "\n"
    atomic_write_json(obj, path, indent=1)
    assert path.read_text(encoding="utf-8") == json.dumps(obj, indent=1) + "\n"


def test_npy_round_trip_keeps_name(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "cache.npy"
    atomic_save_npy(path, array)
    loaded = np.load(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, array)
    assert os.listdir(tmp_path) == ["cache.npy"]


def test_binary_callback(tmp_path):
    path = tmp_path / "blob.bin"
    atomic_write(path, lambda fh: fh.write(b"\x00\x01\n"), binary=True)
    assert path.read_bytes() == b"\x00\x01\n"


def test_replaces_existing_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("binary", [False, True])
def test_failing_write_keeps_previous_file_and_leaves_no_temp(tmp_path, binary):
    path = tmp_path / "f.dat"
    path.write_bytes(b"previous")

    def write(fh):
        fh.write(b"partial" if binary else "partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(path, write, binary=binary)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["f.dat"]


def test_failing_write_without_previous_file_leaves_nothing(tmp_path):
    path = tmp_path / "new.json"
    with pytest.raises(TypeError):
        atomic_write_json({"x": object()}, path)  # not JSON-serialisable
    assert os.listdir(tmp_path) == []


def test_failing_replace_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_written_file_has_the_mode_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "card.md", "# card")
    finally:
        os.umask(old)
    assert (tmp_path / "card.md").stat().st_mode & 0o777 == 0o644
