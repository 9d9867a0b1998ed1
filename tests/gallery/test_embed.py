"""`python -m model_pkg.embed`: sharded embeddings of a photo folder, 2 processes, resume, no duplicates.

A tiny ArcFace embedder (test backbone, 16-d) and 15 generated photos: the 2-process run takes about
half a minute, mostly interpreter start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel, embed, embedding_store
from model_pkg.embed.__main__ import main as embed_main
from model_pkg.gallery_store import embed_photos

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ROOT = Path(__file__).resolve().parents[2]
TINY = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "embedding_size": 16}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """(model folder, photo folder, photo ids): 3 dogs x 5 photos, one more unreadable file."""
    root = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**TINY)).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    ids = []
    for dog in range(3):
        (root / "photos" / f"dog{dog}").mkdir(parents=True)
        for j in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "photos" / f"dog{dog}" / f"{j}.jpg")
            ids.append(f"dog{dog}/{j}.jpg")
    (root / "photos" / "dog2" / "broken.jpg").write_bytes(b"not a jpeg")
    return root / "model", root / "photos", ids


def reference(model_dir: Path, photos: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """The app's embedding of each photo (gallery_store.embed_photos), to compare against."""
    model = ArcFaceEmbedderModel.from_pretrained(model_dir).eval()
    return dict(zip(ids, embed_photos(model, [str(photos / i) for i in ids])))


def check_result(out: Path, ids: list[str], expected: dict[str, np.ndarray]) -> dict:
    manifest = embed.read_manifest(out)
    got_ids, labels, vectors = embed.load_embeddings(out)
    assert sorted(got_ids) == ids  # every readable photo exactly once
    assert labels == [i.split("/")[0] for i in got_ids]
    np.testing.assert_allclose(vectors, np.stack([expected[i] for i in got_ids]), atol=1e-5)
    assert manifest["complete"] and manifest["num_embeddings"] == len(ids) and manifest["failed"] == ["dog2/broken.jpg"]
    assert sum(s["rows"] for s in manifest["shards"]) == len(ids)
    return manifest


def test_two_processes_with_accelerate(collection, tmp_path):
    model_dir, photos, ids = collection
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "model_pkg.embed"]
    cmd += ["--model", str(model_dir), "--images", str(photos), "--out", str(out), "--shard-size", "4", "--batch-size", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 processes" in run.stderr  # really split between two processes, not two copies of one
    manifest = check_result(out, ids, reference(model_dir, photos, ids))
    assert len(manifest["shards"]) == 4  # 16 photos in shards of 4, wherever each was embedded


def test_resume_after_a_kill_embeds_only_what_is_missing(collection, tmp_path):
    model_dir, photos, ids = collection
    out = tmp_path / "emb"
    embed.embed_collection(model_dir, photos, out, shard_size=4, batch_size=4)
    shards = sorted(out.glob("shard-*.parquet"))
    assert len(shards) == 4
    # what a run killed while writing its last shard leaves: that shard is missing, a temporary file is left over
    victim = shards[1]
    lost = set(embedding_store.read_shard_ids(victim)[0])
    victim.unlink()
    (out / f".{victim.name}.abc123.tmp").write_bytes(b"half a parquet file")
    kept = {p.name: p.stat().st_mtime_ns for p in shards if p != victim}
    embed_main(["--model", str(model_dir), "--images", str(photos), "--out", str(out), "--shard-size", "4"])
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert all(after[name] == t for name, t in kept.items())  # finished shards were not touched
    new = [name for name in after if name not in kept]
    assert len(new) == 1 and set(embedding_store.read_shard_ids(out / new[0])[0]) == lost  # only the lost photos again
    check_result(out, ids, reference(model_dir, photos, ids))


def test_a_second_shard_with_the_same_photos_is_dropped(collection, tmp_path):
    model_dir, photos, ids = collection
    out = tmp_path / "emb"
    embed.embed_collection(model_dir, photos, out, shard_size=8, batch_size=8)
    first = sorted(out.glob("shard-*.parquet"))[0]
    ids_first, _ = embedding_store.read_shard_ids(first)
    # a second, concurrent run into the same folder wrote some of the same photos again
    dup_ids = ids_first[:3]
    embedding_store.write_shard(out / "shard-zzzzzzzzzzzzzzzz.parquet", dup_ids, ["x"] * 3, np.ones((3, 16), np.float32), [])
    manifest = embed.embed_collection(model_dir, photos, out, shard_size=8, batch_size=8)
    assert manifest["num_embeddings"] == len(ids)
    got_ids, _, _ = embed.load_embeddings(out)
    assert sorted(got_ids) == ids


def test_clear_errors(collection, tmp_path, capsys):
    model_dir, photos, _ = collection
    with pytest.raises(SystemExit) as exit_info:
        embed_main(["--model", str(model_dir), "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(embed.EmbeddingsError, match="no photos"):
        embed.list_photos(tmp_path / "empty")
    with pytest.raises(embed.EmbeddingsError, match="ArcFace|does not exist"):
        embed.embed_collection(tmp_path / "no-model", photos, tmp_path / "o")
    out = tmp_path / "emb"
    embed.embed_collection(model_dir, photos, out, shard_size=16)
    torch.manual_seed(1)
    ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**TINY)).save_pretrained(tmp_path / "other-model")
    with pytest.raises(embed.EmbeddingsError, match="not comparable"):
        embed.embed_collection(tmp_path / "other-model", photos, out)
    manifest = json.loads((out / embed.MANIFEST_FILE).read_text())
    assert manifest["complete"]  # the refused run changed nothing
    shard = next(out.glob("shard-*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-20])
    with pytest.raises(embed.EmbeddingsError, match="checksum"):
        embed.load_embeddings(out)


def test_dataset_folder_input(collection, tmp_path):
    import datasets

    model_dir, photos, ids = collection
    table = datasets.Dataset.from_dict(
        {"image_path": [str(photos / i) for i in ids[:4]], "id": [f"p{i}" for i in range(4)], "label": ["a", "a", "b", "b"]}
    )
    table.save_to_disk(str(tmp_path / "ds"))
    listed = embed.list_photos(tmp_path / "ds")
    assert [p.id for p in listed] == ["p0", "p1", "p2", "p3"] and [p.label for p in listed] == ["a", "a", "b", "b"]
    manifest = embed.embed_collection(model_dir, tmp_path / "ds", tmp_path / "emb")
    assert manifest["num_embeddings"] == 4 and manifest["complete"]
