"""Issue 15's fixes, fast: decompression bombs refused from the header, two gallery processes on one folder,
model folders from strangers, thresholds guarded against lookalikes. `bench/drill_reliability.py` runs the
full drills against the real app."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.data import ImageLoadError, load_image
from model_pkg.data import images as images_module
from model_pkg.gallery_store import PhotoGallery
from model_pkg.metrics import choose_guarded_threshold, choose_threshold
from model_pkg.modeling_utils import UntrustedModelError, check_model_folder

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "embedding_size": 16, "num_classes": 0}


def tiny() -> ArcFaceEmbedderModel:
    torch.manual_seed(0)
    return ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**TINY)).eval()


def test_png_bomb_refused_from_its_header_but_big_jpegs_decode_at_reduced_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "MAX_DECODED_PIXELS", 10_000)  # stands for 50 MP, on small files
    png, jpg = tmp_path / "bomb.png", tmp_path / "big.jpg"
    Image.new("RGB", (200, 200), "white").save(png)
    Image.new("RGB", (200, 200), "white").save(jpg)
    with pytest.raises(ImageLoadError, match=r"bomb.png.*200x200 pixels \(PNG\) would have to be decoded in full"):
        load_image(png)
    assert load_image(jpg, max_side=50).size == (50, 50)  # JPEG draft mode: decoded at 1/4 scale, 2,500 pixels


def test_two_galleries_on_one_folder_lose_no_registration(tmp_path):
    """Two PhotoGallery objects on one folder stand for two app processes (each has its own file lock
    handle): 12 registrations from 6 threads across both all land, and each sees the other's."""
    rng = np.random.default_rng(0)
    photos = []
    for i in range(12):
        path = tmp_path / f"dog{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        photos.append(str(path))
    embedder = tiny()
    first, second = PhotoGallery(tmp_path / "g", embedder), PhotoGallery(tmp_path / "g", embedder)
    errors: list[BaseException] = []

    def register(gallery: PhotoGallery, names: range) -> None:
        try:
            for i in names:
                gallery.register(f"dog {i}", [photos[i]])
        except BaseException as err:  # reported below: a thread's exception would otherwise be lost
            errors.append(err)

    threads = [threading.Thread(target=register, args=((first, second)[t % 2], range(t, 12, 6))) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = {f"dog {i}" for i in range(12)}
    assert set(first.names) == set(second.names) == expected  # each reloaded the other's saves
    reopened = PhotoGallery(tmp_path / "g", embedder)
    assert sorted(reopened.index.labels) == sorted(expected) and len(reopened) == 12
    assert first.identify(photos[3]).matches[0].label == "dog 3"


def test_debris_of_an_interrupted_save_is_removed_at_the_next_start(tmp_path):
    gallery = PhotoGallery(tmp_path / "g", tiny())
    debris = tmp_path / "g" / ".index.tmp-0123456789ab"  # what a save killed before its folder swap leaves
    debris.mkdir()
    (debris / "vectors.npy").write_bytes(b"half written")
    PhotoGallery(tmp_path / "g", gallery.embedder)
    assert not debris.exists()


def test_model_folders_from_strangers_are_refused_before_loading(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "good")
    check_model_folder(tmp_path / "good")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tmp_path / "good" / "config.json", pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(UntrustedModelError, match="only as pickle files .pytorch_model.bin., which can run code"):
        check_model_folder(pickled)

    remote = tmp_path / "remote"
    shutil.copytree(tmp_path / "good", remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedModelError, match="never executes code from a model folder"):
        check_model_folder(remote)

    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "good", cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UntrustedModelError, match="damaged or has been tampered with"):
        check_model_folder(cut)

    from app.loading import load_embedder
    from model_pkg.loading import ModelLoadError, load_pair_model

    loaded, why = load_embedder(str(pickled))
    assert loaded is None and "pickle" in why
    with pytest.raises(ModelLoadError, match="tampered"):
        load_pair_model(cut)  # refused for what it is before its model type is even considered


def test_guarded_threshold_keeps_random_accuracy_and_resists_lookalikes():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(500), np.zeros(500)]
    random_pairs = np.r_[rng.normal(0.8, 0.05, 500), rng.normal(0.2, 0.05, 500)]
    hard_pairs = np.r_[rng.normal(0.8, 0.05, 500), rng.normal(0.65, 0.05, 500)]

    def accuracy(scores, t):
        return float(((scores >= t) == y).mean())

    plain = choose_threshold(y, random_pairs)
    guarded = choose_guarded_threshold(y, random_pairs, y, hard_pairs, tolerance=0.005)
    assert accuracy(random_pairs, guarded) >= accuracy(random_pairs, plain) - 0.005
    assert accuracy(hard_pairs, guarded) > accuracy(hard_pairs, plain) + 0.2  # the plain one sits far too low
    assert choose_guarded_threshold(y, random_pairs, y, hard_pairs, tolerance=0.0) >= plain
    with pytest.raises(ValueError, match="tolerance"):
        choose_guarded_threshold(y, random_pairs, y, hard_pairs, tolerance=1.5)


def test_training_batches_take_their_phase_and_augmentation_from_their_index():
    """What makes a resumed pair-matcher run equal an uninterrupted one: the loader collates one batch ahead, so
    the phase and the random augmentation of a training batch must depend on its index only, never on a flag or
    on the global RNG at collation time."""
    from model_pkg.training import PhaseCollator

    def cached(rows):
        return {"kind": "tokens"}

    def pixels(rows):
        return {"kind": "pixels", "noise": torch.rand(3)}  # stands for random crops and colour jitter

    train = [{"augment": True}]
    collator = PhaseCollator(cached, pixels, pixels, frozen_steps=2, seed=7)
    uninterrupted = [collator(train) for _ in range(4)]
    assert [b["kind"] for b in uninterrupted] == ["tokens", "tokens", "pixels", "pixels"]
    assert collator([{"augment": False}])["kind"] == "tokens"  # evaluation follows `use_tokens`, counts no batch

    resumed = PhaseCollator(cached, pixels, pixels, frozen_steps=2, seed=7)
    resumed.use_tokens = False  # what the phase callback sets after the switch; training batches ignore it
    resumed.train_batches = 3  # set from the checkpoint's global step on resume
    torch.manual_seed(123)  # whatever state the global RNG is in
    again = resumed(train)
    assert again["kind"] == "pixels" and torch.equal(again["noise"], uninterrupted[3]["noise"])
    assert not torch.equal(uninterrupted[2]["noise"], uninterrupted[3]["noise"])
