"""Tests for model_pkg.data image loading and datasets from folders and DataFrames (images.py, folders.py)."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from model_pkg.data import (
    DatasetLayoutError,
    ImageLoadError,
    as_dataset,
    dataset_from_dataframe,
    find_undersized_groups,
    load_identity_folder,
    load_image,
)
from model_pkg.data import images as images_module
from tests.dogfacenet_photos import DOGS, col


def real_jpeg(n: int = 0) -> Path:
    """A real dogfacenet photo (tests/photos/dog_faces); the tests never write there."""
    return sorted((DOGS / "1000").glob("*.jpg"))[n]


def copy_dogs(dest: Path, dog_ids: list[str], per_dog: int = 2) -> None:
    """A DogFaceNet-style tree `dest/<id>/<id>.<n>.jpg`: the i-th id gets the photos of the i-th dog of DOGS."""
    dogs = sorted(d.name for d in DOGS.iterdir() if len(list(d.glob("*.jpg"))) >= per_dog)
    for dog, source in zip(dog_ids, dogs):
        (dest / dog).mkdir(parents=True)
        for n, src in enumerate(sorted((DOGS / source).glob("*.jpg"))[:per_dog]):
            shutil.copy(src, dest / dog / f"{dog}.{n}.jpg")


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
