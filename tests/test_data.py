"""Tests for model_pkg.data: image loading, folder/DataFrame datasets, splits, pair sampling, collation."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFile

from model_pkg.data import (
    CachedSetPairCollator,
    DatasetLayoutError,
    ImageLoadError,
    SetPair,
    SetPairCollator,
    SplitFileError,
    as_dataset,
    dataset_from_dataframe,
    find_undersized_groups,
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
from model_pkg.data import images as images_module

DOGS = Path("/work/shared/data/dogfacenet")

pytestmark = pytest.mark.skipif(not DOGS.is_dir(), reason="dogfacenet data not available")


@pytest.fixture(scope="module")
def dog_dataset() -> datasets.Dataset:
    return load_identity_folder(DOGS)


@pytest.fixture(scope="module")
def dog_groups(dog_dataset) -> dict[str, list[str]]:
    return group_paths(dog_dataset)


def real_jpeg(n: int = 0) -> Path:
    """A real dogfacenet photo; the tests never write to the shared folder."""
    return sorted((DOGS / "0").glob("*.jpg"))[n]


def copy_dogs(dest: Path, dog_ids: list[str], per_dog: int = 2) -> None:
    for dog in dog_ids:
        (dest / dog).mkdir(parents=True)
        sources = sorted((DOGS / dog).glob("*.jpg"))[:per_dog]
        assert len(sources) == per_dog, f"dogfacenet/{dog} has too few photos for this test"
        for src in sources:
            shutil.copy(src, dest / dog / src.name)


def col(ds: datasets.Dataset, name: str) -> list:
    return list(ds[name][:])


def to_tensor_32(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.resize((32, 32)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


# --------------------------------------------------------------------------- images


def test_load_image_real_jpeg_path_pil_and_array():
    path = real_jpeg()
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (224, 224)
    assert load_image(str(path)).tobytes() == img.tobytes()

    arr = np.asarray(img)
    from_array = load_image(arr)
    assert from_array.mode == "RGB" and np.array_equal(np.asarray(from_array), arr)

    # An open PIL image in another mode is converted without touching the caller's object.
    gray = img.convert("L")
    out = load_image(gray)
    assert out.mode == "RGB" and gray.mode == "L" and out is not gray

    small = load_image(path, max_side=100)
    assert max(small.size) == 100


def test_truncated_jpeg_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    data = real_jpeg().read_bytes()
    bad = tmp_path / "half.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"half\.jpg.*corrupt or truncated.*Re-copy"):
        load_image(bad)


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.jpg.*empty \(0 bytes\).*Re-copy"):
        load_image(empty)


def test_text_file_named_jpg(tmp_path):
    fake = tmp_path / "page.jpg"
    fake.write_text("<html><body>404 not found</body></html>")
    with pytest.raises(ImageLoadError, match=r"page\.jpg.*not an image.*convert it to JPEG or PNG"):
        load_image(fake)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"nope\.jpg.*file not found.*Check the path"):
        load_image(tmp_path / "nope.jpg")


def test_bad_array_dtype():
    with pytest.raises(ImageLoadError, match=r"float32.*astype\(np\.uint8\)"):
        load_image(np.zeros((8, 8, 3), dtype=np.float32))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    img = load_image(path)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((16, 16))
    assert r > 200 and g < 50 and b < 50


def test_rgba_and_palette_transparency_composite_on_white(tmp_path):
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (10, 0, 20, 10))  # right half fully transparent
    path = tmp_path / "alpha.png"
    rgba.save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((2, 5)) == (255, 0, 0)
    assert img.getpixel((15, 5)) == (255, 255, 255)

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    gif = tmp_path / "clear.gif"
    pal.save(gif, transparency=1)
    assert load_image(gif).getpixel((0, 0)) == (255, 255, 255)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.zeros((8, 24), dtype=np.uint16)
    arr[:, 8:16] = 32896  # 16-bit mid-gray (128 * 257)
    arr[:, 16:] = 65535
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.shape == (8, 24, 3)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert abs(int(out[0, 10, 0]) - 128) <= 1  # clipping would give 255 here
    assert out[0, 20].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 3)), out.getpixel((10, 36))
    assert top[0] > 200 and top[2] < 60  # stored left (red) is displayed on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_very_large_jpeg_loads_downscaled(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (12000, 9000), (120, 60, 30)).save(path, quality=50)  # 108 MP > PIL's bomb warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = load_image(path)
    assert img.size == (2048, 1536)
    assert all(abs(a - b) <= 3 for a, b in zip(img.getpixel((100, 100)), (120, 60, 30)))


def test_pil_bomb_limit_is_replaced_by_our_own(monkeypatch):
    # Simulate a photo above 2 * MAX_IMAGE_PIXELS, where plain PIL raises DecompressionBombError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(real_jpeg()).size == (224, 224)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored after the temporary switch-off
    monkeypatch.setattr(images_module, "MAX_PIXELS", 10_000)
    with pytest.raises(ImageLoadError, match=r"0\.0\.jpg.*224x224.*safety limit.*MAX_PIXELS"):
        load_image(real_jpeg())


# --------------------------------------------------------------------------- folders


def test_identity_layout(tmp_path):
    copy_dogs(tmp_path, ["1", "0", "100"], per_dog=2)
    (tmp_path / "0" / "notes.txt").write_text("not an image")
    shutil.copy(real_jpeg(), tmp_path / "0" / ".hidden.jpg")
    ds = load_identity_folder(tmp_path)
    assert ds.column_names == ["image_path", "label", "group"]
    assert col(ds, "label") == ["0", "0", "1", "1", "100", "100"]
    assert col(ds, "group") == col(ds, "label")
    assert all(os.path.isabs(p) and p.endswith(".jpg") and "hidden" not in p for p in col(ds, "image_path"))
    assert col(ds, "image_path")[:2] == sorted(col(ds, "image_path")[:2])
    assert "layout=identity" in ds.info.description


def test_seed_layout_auto_detected(tmp_path):
    src = real_jpeg()
    for cls, names in {"beagle": ["17_0.jpg", "17_1.jpg", "my_dog_2.jpg"], "pug": ["5_0.jpg", "5_10.jpeg"]}.items():
        (tmp_path / cls).mkdir()
        for name in names:
            shutil.copy(src, tmp_path / cls / name)
    (tmp_path / "pug" / "readme.md").write_text("ignored: not an image")
    ds = load_identity_folder(tmp_path)
    rows = {os.path.basename(p): (lab, grp) for p, lab, grp in zip(col(ds, "image_path"), col(ds, "label"), col(ds, "group"))}
    assert rows == {
        "17_0.jpg": ("beagle", "17"),
        "17_1.jpg": ("beagle", "17"),
        "my_dog_2.jpg": ("beagle", "my_dog"),
        "5_0.jpg": ("pug", "5"),
        "5_10.jpeg": ("pug", "5"),
    }
    forced = load_identity_folder(tmp_path, layout="identity")
    assert col(forced, "group") == col(forced, "label")


def test_seed_layout_rejects_identity_tree(tmp_path):
    copy_dogs(tmp_path, ["0", "1"], per_dog=1)
    assert col(load_identity_folder(tmp_path), "group") == ["0", "1"]  # auto -> identity
    with pytest.raises(DatasetLayoutError, match=r"layout='seed' expects.*0\.0\.jpg.*layout='identity'"):
        load_identity_folder(tmp_path, layout="seed")


def test_min_size_excludes_whole_group(tmp_path, caplog):
    copy_dogs(tmp_path, ["0", "1", "2"], per_dog=3)
    Image.new("RGB", (224, 40), "gray").save(tmp_path / "1" / "1.99.jpg")  # one tiny photo in dog 1
    rows_before = load_identity_folder(tmp_path)
    bad = find_undersized_groups(rows_before, 64)
    assert list(bad) == [("1", "1")]
    assert list(bad[("1", "1")].values()) == [(224, 40)]

    with caplog.at_level(logging.WARNING, logger="model_pkg.data.folders"):
        ds = load_identity_folder(tmp_path, min_size=64)
    assert sorted(set(col(ds, "label"))) == ["0", "2"]  # all 4 photos of dog 1 dropped, not just the small one
    assert len(ds) == 6
    assert "excluded 1 group" in caplog.text and "1.99.jpg: 224x40" in caplog.text
    assert "excluded 1 group" in ds.info.description
    assert len(load_identity_folder(tmp_path, min_size=40)) == 10  # 40 is not below 40


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing.*does not exist.*<identity>"):
        load_identity_folder(tmp_path / "missing")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file\.txt.*not a directory.*one sub-folder per identity"):
        load_identity_folder(a_file)
    empty = tmp_path / "empty"
    (empty / "dog").mkdir(parents=True)
    (empty / "dog" / "a.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match=r"no images found under .*empty.*<identity>/<image files>"):
        load_identity_folder(empty)
    single = tmp_path / "single"
    (single / "x").mkdir(parents=True)
    shutil.copy(real_jpeg(), single / "x" / "a.jpg")
    with pytest.raises(DatasetLayoutError, match=r"need at least two identities to form negative pairs; found 1: 'x'"):
        load_identity_folder(single)


def test_dataframe_form_and_as_dataset(tmp_path):
    df = pd.DataFrame({"x": [str(real_jpeg(1)), "rel/b.jpg", str(real_jpeg(0))], "y": [7, 3, 7]})
    ds = dataset_from_dataframe(df)
    assert col(ds, "label") == ["3", "7", "7"]
    assert col(ds, "group") == col(ds, "label")
    assert col(ds, "image_path")[0] == os.path.abspath("rel/b.jpg")
    assert col(ds, "image_path")[1:] == [str(real_jpeg(0)), str(real_jpeg(1))]

    renamed = df.rename(columns={"x": "file", "y": "dog"}).assign(session=["s1", "s2", "s1"])
    ds2 = dataset_from_dataframe(renamed, x="file", y="dog", group="session")
    assert col(ds2, "group") == ["s2", "s1", "s1"]

    with pytest.raises(
        DatasetLayoutError, match=r"no column\(s\) \['x', 'y'\].*\['file', 'dog', 'session'\].*x=<image path column>"
    ):
        dataset_from_dataframe(renamed)
    with pytest.raises(DatasetLayoutError, match="DataFrame is empty"):
        dataset_from_dataframe(df.iloc[:0])
    with pytest.raises(DatasetLayoutError, match=r"missing values.*row position 1.*drop or fill"):
        dataset_from_dataframe(df.assign(y=[1, None, 2]))

    assert col(as_dataset(df), "label") == col(ds, "label")
    copy_dogs(tmp_path, ["0", "1"], per_dog=1)
    assert col(as_dataset(tmp_path), "label") == ["0", "1"]
    raw = datasets.Dataset.from_dict({"image_path": ["a.jpg", "b.jpg"], "label": [1, 2]})
    normalised = as_dataset(raw)
    assert col(normalised, "label") == ["1", "2"] and col(normalised, "group") == ["1", "2"]
    with pytest.raises(DatasetLayoutError, match=r"lacks column\(s\) \['label'\].*rename_column"):
        as_dataset(datasets.Dataset.from_dict({"image_path": ["a.jpg"]}))


# --------------------------------------------------------------------------- splits


def test_split_real_identities(dog_dataset):
    labels = col(dog_dataset, "label")
    splits = split_identities(labels)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 828, "val": 178, "test": 178}  # 1184 identities, 15% / 15%
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
    assert len(small) == 152  # dogfacenet has 47 dogs with 2 photos and 105 with 3
    for p in pairs:
        assert len(p.paths_a) == len(p.paths_b) == 2
        assert set(p.paths_a) <= set(dog_groups[p.id_a]) and set(p.paths_b) <= set(dog_groups[p.id_b])
        if p.label == 1:
            assert p.id_a == p.id_b and not set(p.paths_a) & set(p.paths_b)
            assert p.id_a not in small
        else:
            assert p.id_a != p.id_b
    in_negatives = {i for p in pairs if p.label == 0 for i in (p.id_a, p.id_b)}
    assert len(small & in_negatives) > 50


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
    dog = dog_groups["100"]
    features = [
        {"paths_a": dog[:1], "paths_b": dog[1:4], "label": 1},
        {"paths_a": dog[4:7], "paths_b": dog_groups["0"][:2], "label": 0},
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
    dog = dog_groups["100"]
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
