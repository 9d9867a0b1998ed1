"""Image-caption data as `datasets` splits: one row per image, `image_path` + its `captions` (a list).

Three sources, one result (`datasets.DatasetDict` of split name -> Dataset with `image_path`, `image_id`,
`captions`):

* Flickr8k's own files: `Flickr8k.token.txt` (`<image>.jpg#<n>\t<caption>`) + split lists
  (`Flickr_8k.trainImages.txt`, `Flickr_8k.devImages.txt`) + an `images/` folder
  (`load_flickr8k_splits`);
* the HF `imagefolder` form: a folder (or one sub-folder per split) with the photos and a
  `metadata.jsonl` whose rows hold `file_name` and `caption` (a string or a list) or `captions`
  (`load_imagefolder_captions`);
* a Hub dataset id such as the seed's `jxie/flickr8k`, when the Hub is reachable (`load_hub_captions`);
  its photos are written once as JPEGs under `cache_dir` so every source yields file paths.

Split-list images missing from the image folder are skipped with a warning (counted in
`dataset.info.description`); an image with no caption is skipped likewise; a missing caption file, a
malformed line or a split with no usable image is a `CaptionDataError` naming the file and the fix.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

__all__ = [
    "CaptionDataError",
    "FLICKR8K_SPLITS",
    "caption_pairs",
    "load_caption_splits",
    "load_flickr8k_splits",
    "load_hub_captions",
    "load_imagefolder_captions",
    "read_token_file",
]

FLICKR8K_SPLITS = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt"}
_FEATURES = datasets.Features(
    {
        "image_path": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
    }
)


class CaptionDataError(ValueError):
    """Caption data that cannot be used: missing or malformed files, or no usable image in a split."""


def read_token_file(token_file: str | os.PathLike) -> dict[str, list[str]]:
    """`Flickr8k.token.txt` -> {image file name: [captions in file order]}."""
    path = Path(token_file)
    if not path.is_file():
        raise CaptionDataError(
            f"caption file {str(path)!r} does not exist: pass Flickr8k.token.txt (lines '<image>.jpg#<n><TAB><caption>')."
        )
    captions: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            key, tab, caption = line.partition("\t")
            name, hash_, _ = key.partition("#")
            if not tab or not hash_ or not name or not caption.strip():
                raise CaptionDataError(f"{str(path)!r} line {number} is not '<image>.jpg#<n><TAB><caption>': {line[:80]!r}")
            captions[name].append(caption.strip())
    if not captions:
        raise CaptionDataError(f"caption file {str(path)!r} holds no captions.")
    return dict(captions)


def _read_split_list(path: Path) -> list[str]:
    if not path.is_file():
        raise CaptionDataError(f"split list {str(path)!r} does not exist: pass a file with one image name per line.")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise CaptionDataError(f"split list {str(path)!r} lists no images.")
    return names


def _dataset(rows: list[dict], split: str, skipped: dict[str, list[str]]) -> datasets.Dataset:
    if not rows:
        raise CaptionDataError(
            f"split {split!r} has no usable image: {len(skipped['missing_image'])} listed images are missing from the "
            f"image folder and {len(skipped['no_caption'])} have no caption. Check the image folder and caption file."
        )
    for reason, names in skipped.items():
        if names:
            logger.warning("split %s: skipped %d image(s) (%s), e.g. %s", split, len(names), reason.replace("_", " "), names[:3])
    info = datasets.DatasetInfo(description=json.dumps({"skipped": {k: len(v) for k, v in skipped.items()}}), features=_FEATURES)
    return datasets.Dataset.from_list(rows, features=_FEATURES, info=info)


def _rows(names, captions: Mapping[str, list[str]], image_dir: Path) -> tuple[list[dict], dict[str, list[str]]]:
    rows: list[dict] = []
    skipped: dict[str, list[str]] = {"missing_image": [], "no_caption": []}
    for name in names:
        if not captions.get(name):
            skipped["no_caption"].append(name)
        elif not (image_dir / name).is_file():
            skipped["missing_image"].append(name)
        else:
            rows.append({"image_path": str(image_dir / name), "image_id": name, "captions": list(captions[name])})
    return rows, skipped


def load_flickr8k_splits(
    data_dir: str | os.PathLike,
    token_file: str | os.PathLike | None = None,
    split_lists: Mapping[str, str | os.PathLike] | None = None,
    image_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Flickr8k's token file + split lists -> DatasetDict (`train`, `dev` by default).

    Args:
        data_dir: the Flickr8k folder (`images/`, `Flickr8k.token.txt`, the split lists).
        token_file: default `<data_dir>/Flickr8k.token.txt`.
        split_lists: split name -> list file (relative to `data_dir` or absolute); default train and dev.
        image_dir: default `<data_dir>/images`.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CaptionDataError(f"data folder {str(root)!r} does not exist: pass the Flickr8k folder.")
    captions = read_token_file(token_file or root / "Flickr8k.token.txt")
    images = Path(image_dir) if image_dir else root / "images"
    out = {}
    for split, list_file in (split_lists or FLICKR8K_SPLITS).items():
        list_path = Path(list_file) if Path(list_file).is_absolute() or Path(list_file).exists() else root / list_file
        rows, skipped = _rows(_read_split_list(list_path), captions, images)
        out[split] = _dataset(rows, split, skipped)
    return datasets.DatasetDict(out)


def _metadata_captions(row: dict, where: str) -> list[str]:
    for key in ("captions", "caption", "text"):
        if key in row:
            value = row[key]
            return [value] if isinstance(value, str) else [str(v) for v in value]
    numbered = [row[k] for k in sorted(row) if k.startswith("caption_")]
    if numbered:
        return [str(v) for v in numbered]
    raise CaptionDataError(f"{where}: a metadata row needs 'caption', 'captions' or 'caption_0'..; has {sorted(row)}")


def load_imagefolder_captions(folder: str | os.PathLike) -> datasets.DatasetDict:
    """HF `imagefolder` layout with `metadata.jsonl` (`file_name` + caption(s)) -> DatasetDict.

    Either `<folder>/metadata.jsonl` (one split, named `train`) or `<folder>/<split>/metadata.jsonl`
    for each split. Several rows for one `file_name` add captions to that image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CaptionDataError(f"image folder {str(root)!r} does not exist.")
    split_dirs = (
        {"train": root}
        if (root / "metadata.jsonl").is_file()
        else {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and (d / "metadata.jsonl").is_file()}
    )
    if not split_dirs:
        raise CaptionDataError(
            f"{str(root)!r} has no metadata.jsonl (nor <split>/metadata.jsonl): write one JSON object per line with "
            "'file_name' and 'caption' (the Hugging Face imagefolder format)."
        )
    out = {}
    for split, directory in split_dirs.items():
        captions: dict[str, list[str]] = defaultdict(list)
        meta = directory / "metadata.jsonl"
        with open(meta, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CaptionDataError(f"{str(meta)!r} line {number} is not JSON ({err}).") from err
                if not isinstance(row, dict) or "file_name" not in row:
                    raise CaptionDataError(f"{str(meta)!r} line {number} has no 'file_name'.")
                captions[row["file_name"]].extend(c for c in _metadata_captions(row, f"{meta} line {number}") if c.strip())
        rows, skipped = _rows(list(captions), captions, directory)
        out[split] = _dataset(rows, split, skipped)
    return datasets.DatasetDict(out)


def load_hub_captions(
    dataset_id: str = "jxie/flickr8k", cache_dir: str | os.PathLike = "~/.cache/petmatch/captions"
) -> datasets.DatasetDict:
    """A Hub image-caption dataset (image column + `caption_0..` / `caption(s)`) -> DatasetDict with file paths.

    Needs the Hub; photos are saved once as JPEGs under `cache_dir/<dataset_id>/<split>/`."""
    try:
        hub = datasets.load_dataset(dataset_id)
    except Exception as err:  # offline: datasets / huggingface_hub raise several error types
        raise CaptionDataError(
            f"could not load the Hub dataset {dataset_id!r} ({type(err).__name__}: {err}); offline, use the local "
            "Flickr8k files (load_flickr8k_splits) or an imagefolder with metadata.jsonl."
        ) from err
    out = {}
    for split, table in hub.items():
        folder = Path(os.path.expanduser(os.fspath(cache_dir))) / dataset_id.replace("/", "__") / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, row in enumerate(table):
            path = folder / f"{i:06d}.jpg"
            if not path.is_file():
                tmp = folder / f".{i:06d}.tmp.jpg"
                row["image"].convert("RGB").save(tmp, quality=95)
                os.replace(tmp, path)
            caps = _metadata_captions({k: v for k, v in row.items() if k != "image"}, f"{dataset_id} {split} row {i}")
            rows.append({"image_path": str(path), "image_id": f"{split}/{i}", "captions": caps})
        out[split] = _dataset(rows, split, {"missing_image": [], "no_caption": []})
    return datasets.DatasetDict(out)


def load_caption_splits(source: str | os.PathLike, **kwargs) -> datasets.DatasetDict:
    """Any of the three sources: a Flickr8k folder (has a token file), an imagefolder with metadata.jsonl,
    or else a Hub dataset id."""
    path = Path(source)
    if path.is_dir():
        if (path / "Flickr8k.token.txt").is_file() or "token_file" in kwargs:
            return load_flickr8k_splits(path, **kwargs)
        return load_imagefolder_captions(path)
    text = os.fspath(source)
    if path.exists():
        raise CaptionDataError(f"caption data {text!r} is not a folder: pass the Flickr8k folder or an imagefolder.")
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CaptionDataError(f"caption folder {text!r} does not exist (and it is not a Hub id like 'jxie/flickr8k').")
    return load_hub_captions(text, **kwargs)


def caption_pairs(split: datasets.Dataset) -> tuple[list[str], list[str], list[int]]:
    """A split -> (image paths, all captions flattened, the image row of each caption)."""
    paths = split["image_path"][:]
    captions, owner = [], []
    for i, caps in enumerate(split["captions"][:]):
        captions.extend(caps)
        owner.extend([i] * len(caps))
    return paths, captions, owner
