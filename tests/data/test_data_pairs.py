"""Tests for model_pkg.data splits, pair sampling and collation (splits.py, pairs.py, collate.py)."""

from __future__ import annotations

import json
import logging
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from model_pkg.data import (
    CachedSetPairCollator,
    ImageLoadError,
    SetPair,
    SetPairCollator,
    SplitFileError,
    get_or_create_splits,
    group_paths,
    load_identity_folder,
    load_image,
    load_splits,
    nearest_identities,
    pad_sets,
    sample_pairs,
    save_splits,
    split_identities,
    subset_by_identities,
)
from tests.dogfacenet_photos import DOGS, FULL_DOGS, col


@pytest.fixture(scope="module")
def dog_dataset() -> datasets.Dataset:
    """The 22 dogs of tests/photos/dog_faces (20 with 5-6 photos, 2 with 3)."""
    return load_identity_folder(DOGS)


@pytest.fixture(scope="module")
def dog_groups(dog_dataset) -> dict[str, list[str]]:
    return group_paths(dog_dataset)


def to_tensor_32(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.resize((32, 32)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


# --------------------------------------------------------------------------- splits


def test_dataset_scale_dogfacenet_split_sizes(shared_data):
    """Dataset-scale: the whole DogFaceNet's split sizes (train/splits/dogfacenet.json was made this way)."""
    labels = col(load_identity_folder(FULL_DOGS), "label")
    splits = split_identities(labels)
    assert {k: len(v) for k, v in splits.items()} == {"train": 828, "val": 178, "test": 178}  # 1184 dogs, 15% / 15%
    assert splits == load_splits(DOGS.parents[2] / "train" / "splits" / "dogfacenet.json")
    assert sum(1 for n in Counter(labels).values() if n < 4) == 152  # 47 dogs with 2 photos and 105 with 3


def test_split_real_identities(dog_dataset):
    labels = col(dog_dataset, "label")
    splits = split_identities(labels)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == len(set(labels)) == 22 and sizes["val"] == sizes["test"] == 3  # 15% / 15%
    sets = {k: set(v) for k, v in splits.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(labels)
    assert all(v == sorted(v) for v in splits.values())
    assert split_identities(list(reversed(labels))) == splits  # input order does not matter
    assert split_identities(labels, seed=1) != splits

    val_rows = subset_by_identities(dog_dataset, splits["val"])
    assert set(col(val_rows, "label")) == sets["val"]
    assert len(val_rows) == sum(1 for label in labels if label in sets["val"])
    with pytest.raises(ValueError, match="none of the 1 requested identities.*another dataset"):
        subset_by_identities(dog_dataset, ["not-a-dog"])


def test_split_small_and_invalid():
    assert {k: len(v) for k, v in split_identities(["a", "b", "c"]).items()} == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(ValueError, match=r"need at least 3 distinct identities.*got 2"):
        split_identities(["a", "b", "a"])
    with pytest.raises(ValueError, match="must be < 1"):
        split_identities(["a", "b", "c"], val_fraction=0.5, test_fraction=0.5)


def test_save_load_and_reuse(tmp_path, caplog):
    labels = [f"dog{i}" for i in range(20)]
    path = tmp_path / "nested" / "splits.json"
    created = get_or_create_splits(labels, path, seed=3)
    assert path.is_file() and load_splits(path) == created
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temp file left behind

    # An existing file wins over new arguments: the held-out identities stay fixed.
    before = path.read_bytes()
    assert get_or_create_splits(labels, path, seed=99, val_fraction=0.4) == created
    assert path.read_bytes() == before

    # Identities that vanished from the data are dropped; new ones are reported, not silently split.
    with caplog.at_level(logging.WARNING, logger="model_pkg.data.splits"):
        reused = get_or_create_splits(labels[1:] + ["newcomer"], path)
    assert "dog0" not in sum(reused.values(), []) and "newcomer" not in sum(reused.values(), [])
    assert "1 identities in the dataset are in no split" in caplog.text

    with pytest.raises(SplitFileError, match=r"none of which are in the dataset.*another dataset"):
        get_or_create_splits(["cat1", "cat2", "cat3"], path)

    save_splits({"train": ["b", "a"], "val": ["c"], "test": ["d"]}, path)
    assert json.loads(path.read_text())["train"] == ["a", "b"]


def test_corrupt_or_invalid_split_files(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text('{"train": ["a", "b"], "val": [')
    with pytest.raises(SplitFileError, match=r"splits\.json.*not valid JSON.*delete it"):
        load_splits(path)
    with pytest.raises(SplitFileError, match="not valid JSON"):
        get_or_create_splits(["a", "b", "c"], path)
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": ["c"]}))
    with pytest.raises(SplitFileError, match=r"both 'train' and 'val'.*\['b'\].*delete the file"):
        load_splits(path)
    path.write_text(json.dumps({"train": ["a"], "valid": ["b"], "test": ["c"]}))
    with pytest.raises(SplitFileError, match=r"exactly the keys \['train', 'val', 'test'\]"):
        load_splits(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.json.*get_or_create_splits"):
        load_splits(tmp_path / "missing.json")
    with pytest.raises(SplitFileError, match="disjoint"):
        save_splits({"train": ["a"], "val": ["a"], "test": []}, path)


# --------------------------------------------------------------------------- pairs


def test_pairs_balance_and_reproducibility(dog_groups):
    pairs = sample_pairs(dog_groups, 1001, set_size=2, seed=5)
    assert len(pairs) == 1001 and all(isinstance(p, SetPair) for p in pairs)
    assert sum(p.label for p in pairs) == round(1001 * 0.5) == 500
    assert sum(p.label for p in sample_pairs(dog_groups, 101, positive_ratio=0.3)) == 30
    assert sample_pairs(dog_groups, 1001, set_size=2, seed=5) == pairs
    assert sample_pairs(dog_groups, 1001, set_size=2, seed=6) != pairs
    labels = [p.label for p in pairs]
    assert labels[:20] != sorted(labels[:20]) and labels != sorted(labels)  # shuffled, not blocked


def test_pairs_positive_sets_disjoint_and_small_identities_only_negative(dog_groups, dog_dataset):
    pairs = sample_pairs(dog_dataset, 3000, set_size=2, seed=1)
    small = {i for i, paths in dog_groups.items() if len(paths) < 4}
    assert small == {"1000", "1001"}  # 3 photos each: too few for two disjoint sets of 2
    for p in pairs:
        assert len(p.paths_a) == len(p.paths_b) == 2
        assert set(p.paths_a) <= set(dog_groups[p.id_a]) and set(p.paths_b) <= set(dog_groups[p.id_b])
        if p.label == 1:
            assert p.id_a == p.id_b and not set(p.paths_a) & set(p.paths_b)
            assert p.id_a not in small
        else:
            assert p.id_a != p.id_b
    in_negatives = {i for p in pairs if p.label == 0 for i in (p.id_a, p.id_b)}
    assert small <= in_negatives


def test_pairs_set_size_range():
    groups = {"five": [f"f{i}" for i in range(5)], "many": [f"m{i}" for i in range(20)], "two": ["t0", "t1"]}
    pairs = sample_pairs(groups, 600, set_size=(2, 4), seed=2)
    sizes = Counter()
    for p in pairs:
        for side in (p.paths_a, p.paths_b):
            assert 2 <= len(side) <= 4
            sizes[len(side)] += 1
        if p.label == 1:
            assert p.id_a in ("five", "many")  # "two" cannot give two disjoint sets of >= 2
            assert not set(p.paths_a) & set(p.paths_b)
            if p.id_a == "five":
                assert len(p.paths_a) + len(p.paths_b) <= 5
    assert set(sizes) == {2, 3, 4}


def test_pairs_allow_overlap():
    groups = {"a": ["a0", "a1"], "b": ["b0"]}
    with pytest.raises(ValueError, match=r"no identity has at least 4 photos.*allow_overlap=True"):
        sample_pairs(groups, 10, set_size=2, positive_ratio=1.0)
    pairs = sample_pairs(groups, 50, set_size=(1, 2), positive_ratio=1.0, allow_overlap=True)
    assert all(p.id_a == "a" and set(p.paths_a) != set(p.paths_b) for p in pairs)
    assert any(set(p.paths_a) & set(p.paths_b) for p in pairs)


def test_hard_negatives_come_from_neighbours(dog_groups):
    rng = np.random.default_rng(0)
    embeddings = {i: rng.normal(size=16) for i in dog_groups}
    neighbours = nearest_identities(embeddings, k=3)
    pairs = sample_pairs(dog_groups, 400, negatives="hard", neighbours=neighbours, seed=4)
    negatives = [p for p in pairs if p.label == 0]
    assert len(negatives) == 200
    assert all(p.id_b in neighbours[p.id_a] for p in negatives)


def test_nearest_identities():
    emb = {"a": np.array([1.0, 0.0]), "b": np.array([0.9, 0.1]), "c": np.array([0.0, 5.0]), "d": np.array([-1.0, 0.0])}
    nn = nearest_identities(emb, k=2)
    assert nn["a"] == ["b", "c"]
    assert nn["d"] == ["c", "b"]
    assert all(k not in v for k, v in nn.items())
    assert len(nearest_identities(emb, k=10)["a"]) == 3
    with pytest.raises(ValueError, match="same length"):
        nearest_identities({"a": np.ones(2), "b": np.ones(3)})


def test_pair_sampling_errors(dog_groups):
    with pytest.raises(ValueError, match=r"positive_ratio must be in \[0, 1\]"):
        sample_pairs(dog_groups, 10, positive_ratio=1.5)
    with pytest.raises(ValueError, match="set_size must be >= 1"):
        sample_pairs(dog_groups, 10, set_size=0)
    with pytest.raises(ValueError, match=r"needs neighbours=.*nearest_identities"):
        sample_pairs(dog_groups, 10, negatives="hard")
    with pytest.raises(ValueError, match=r"need at least two identities.*found 1"):
        sample_pairs({"solo": ["a", "b", "c"]}, 10)
    with pytest.raises(ValueError, match=r"no identity has at least 42 photos.*lower set_size"):
        sample_pairs(dog_groups, 10, set_size=21)


# --------------------------------------------------------------------------- collation


def test_set_pair_collator_shapes_masks_padding(dog_groups):
    dog = dog_groups["460"]
    features = [
        {"paths_a": dog[:1], "paths_b": dog[1:4], "label": 1},
        {"paths_a": dog[3:6], "paths_b": dog_groups["327"][:2], "label": 0},
    ]
    batch = SetPairCollator(to_tensor_32)(features)
    assert batch["pixel_values_a"].shape == (2, 3, 3, 32, 32)
    assert batch["pixel_values_b"].shape == (2, 3, 3, 32, 32)
    assert batch["pixel_values_a"].dtype == torch.float32
    assert batch["mask_a"].tolist() == [[True, False, False], [True, True, True]]
    assert batch["mask_b"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [1.0, 0.0]
    assert batch["pixel_values_a"][0, 1:].abs().sum() == 0  # padding is zeros
    assert batch["pixel_values_a"][0, 0].abs().sum() > 0
    assert torch.allclose(batch["pixel_values_a"][0, 0], to_tensor_32(load_image(dog[0])))

    unlabeled = SetPairCollator(to_tensor_32)([{"paths_a": dog[:1], "paths_b": dog[1:2]}])
    assert "labels" not in unlabeled

    pair = sample_pairs(dog_groups, 2, set_size=2, seed=0)
    assert SetPairCollator(to_tensor_32)(pair)["mask_a"].shape == (2, 2)  # SetPair objects work too


def test_collator_errors(dog_groups, tmp_path):
    dog = dog_groups["460"]
    collate = SetPairCollator(to_tensor_32, max_set_size=2)
    with pytest.raises(ValueError, match=r"set A of example 1 is empty: give at least one photo per side"):
        collate([{"paths_a": dog[:1], "paths_b": dog[1:2]}, {"paths_a": [], "paths_b": dog[:1]}])
    with pytest.raises(ValueError, match=r"set B of example 0 has 3 photos, more than max_set_size=2"):
        collate([{"paths_a": dog[:1], "paths_b": dog[:3]}])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        collate([{"paths_a": [str(broken)], "paths_b": dog[:1]}])
    with pytest.raises(ValueError, match=r"must return a \(3, H, W\) tensor"):
        SetPairCollator(lambda img: torch.zeros(32, 32))([{"paths_a": dog[:1], "paths_b": dog[:1]}])


def test_pad_sets_tokens_and_cached_collator():
    tokens = [torch.ones(2, 4, 8), torch.full((3, 4, 8), 2.0)]
    padded, mask = pad_sets(tokens)
    assert padded.shape == (2, 3, 4, 8)
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    assert padded[0, 2].abs().sum() == 0 and (padded[1] == 2).all()
    with pytest.raises(ValueError, match="set 1 is empty"):
        pad_sets([torch.ones(1, 2), torch.ones(0, 2)])

    cache = torch.arange(5 * 4 * 8, dtype=torch.float16).reshape(5, 4, 8)
    index = {f"img{i}.jpg": i for i in range(5)}
    collate = CachedSetPairCollator(cache, index)
    batch = collate(
        [
            {"paths_a": ["img3.jpg"], "paths_b": ["img0.jpg", "img1.jpg"], "label": 1},
            {"paths_a": ["img2.jpg", "img4.jpg"], "paths_b": ["img1.jpg"], "label": 0},
        ]
    )
    assert batch["tokens_a"].shape == (2, 2, 4, 8) and batch["tokens_a"].dtype == torch.float32
    assert torch.equal(batch["tokens_a"][1, 1], cache[4].float())
    assert torch.equal(batch["tokens_b"][0, 1], cache[1].float())
    assert batch["mask_a"].tolist() == [[True, False], [True, True]]
    assert batch["labels"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"'img9\.jpg'.*not in the token cache.*rebuild the cache"):
        collate([{"paths_a": ["img9.jpg"], "paths_b": ["img0.jpg"]}])
    with pytest.raises(ValueError, match="index points at row 5 but the cache has 5 rows"):
        CachedSetPairCollator(cache, {"x": 5})
