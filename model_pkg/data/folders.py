"""Turn photo folders or DataFrames into one ``datasets.Dataset`` of (image_path, label, group).

Two on-disk layouts are understood:

* ``identity``: ``<data_dir>/<identity>/<any file>``; label = group = folder name
  (DogFaceNet: ``dogfacenet/17/17.3.jpg``).
* ``seed``: ``<data_dir>/<class>/<ID>_<seq>.<ext>``; label = class folder and
  group = ``<ID>``, the file-name part before the last underscore.

``label`` is the identity used to build positive/negative pairs; ``group`` is the
unit that is kept or dropped together by the ``min_size`` filter.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

COLUMNS = ("image_path", "label", "group")

_SEED_NAME = re.compile(r"^.+_\d+\.\w+$")

_FEATURES = datasets.Features({name: datasets.Value("string") for name in COLUMNS})


class DatasetLayoutError(ValueError):
    """The folder or table does not describe a usable identity dataset."""


def column_values(dataset: datasets.Dataset, name: str) -> list[Any]:
    """One column as a plain Python list, whatever the dataset's output format.

    Newer ``datasets`` return a lazy ``Column`` whose element-wise iteration is
    slow; slicing it materialises a list in one Arrow call.
    """
    return list(dataset.with_format(None)[name][:])


def _is_hidden(part: str) -> bool:
    return part.startswith(".")


def _scan(root: Path, extensions: Sequence[str]) -> list[tuple[str, str]]:
    """List (top-level folder name, absolute file path) for every image below ``root``."""
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found: list[tuple[str, str]] = []
    loose: list[str] = []
    # os.walk + scandir is much faster than Path.rglob on large trees.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        rel = os.path.relpath(dirpath, root)
        for fname in filenames:
            if _is_hidden(fname) or not fname.lower().endswith(exts):
                continue
            if rel == ".":
                loose.append(fname)
                continue
            top = rel.split(os.sep, 1)[0]
            found.append((top, os.path.abspath(os.path.join(dirpath, fname))))
    if loose:
        logger.warning(
            "%s: ignoring %d image(s) directly in the top folder (e.g. %r): each image must sit in "
            "a sub-folder named after its identity",
            root,
            len(loose),
            sorted(loose)[0],
        )
    return found


def _check_identity_count(labels: Iterable[str], where: str) -> None:
    unique = sorted(set(labels))
    if len(unique) < 2:
        shown = ", ".join(repr(u) for u in unique)
        raise DatasetLayoutError(
            f"{where}: need at least two identities to form negative pairs; "
            f"found {len(unique)}: {shown}. Add a sub-folder per identity."
        )


def _rows_to_dataset(rows: list[tuple[str, str, str]], description: str = "") -> datasets.Dataset:
    # Sorting by (label, path) makes the dataset independent of filesystem order.
    rows = sorted(rows, key=lambda r: (r[1], r[0]))
    data = {
        "image_path": [r[0] for r in rows],
        "label": [r[1] for r in rows],
        "group": [r[2] for r in rows],
    }
    info = datasets.DatasetInfo(description=description, features=_FEATURES)
    return datasets.Dataset.from_dict(data, features=_FEATURES, info=info)


def _header_size(path: str) -> tuple[int, int] | None:
    """Image (width, height) from the header only; None when the header is unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return None


def find_undersized_groups(
    source: datasets.Dataset | Sequence[tuple[str, str, str]],
    min_size: int,
) -> dict[tuple[str, str], dict[str, tuple[int, int] | None]]:
    """Find groups that contain a photo smaller than ``min_size`` on either side.

    ``source`` is a dataset with image_path/label/group columns or a list of
    (image_path, label, group) rows. Only image headers are read. Returns
    ``{(label, group): {path: (width, height) or None}}`` listing the offending
    photos; ``None`` marks a photo whose header could not be read, which also
    disqualifies its group since it would fail later during training.
    """
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if isinstance(source, datasets.Dataset):
        rows = list(zip(*(column_values(source, c) for c in COLUMNS)))
    else:
        rows = list(source)
    bad: dict[tuple[str, str], dict[str, tuple[int, int] | None]] = {}
    for path, label, group in rows:
        size = _header_size(path)
        if size is None or size[0] < min_size or size[1] < min_size:
            bad.setdefault((label, group), {})[path] = size
    return bad


def _resolve_layout(layout: str, items: list[tuple[str, str]], root: Path) -> str:
    if layout not in ("auto", "identity", "seed"):
        raise ValueError(f"layout must be 'auto', 'identity' or 'seed', got {layout!r}")
    names_match = [bool(_SEED_NAME.match(os.path.basename(p))) for _, p in items]
    if layout == "auto":
        return "seed" if all(names_match) else "identity"
    if layout == "seed" and not all(names_match):
        bad = [os.path.basename(p) for (_, p), ok in zip(items, names_match) if not ok]
        raise DatasetLayoutError(
            f"{root}: layout='seed' expects file names like <ID>_<number>.<ext>, but "
            f"{len(bad)} file(s) do not match, e.g. {bad[:3]}. Use layout='identity' "
            f"(one folder per identity) or rename the files."
        )
    return layout


def load_identity_folder(
    data_dir: str | os.PathLike,
    layout: str = "auto",
    min_size: int | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> datasets.Dataset:
    """Index a folder of identity sub-folders as a dataset sorted by (label, image_path).

    ``layout`` is "identity", "seed" or "auto" (seed when every image name looks
    like ``<ID>_<number>.<ext>``, identity otherwise). Files with other extensions
    and hidden files/folders are skipped; images lying directly in ``data_dir``
    are skipped with a warning. Images in nested folders belong to their
    top-level folder. With ``min_size``, every group containing a photo whose
    width or height is below it (or whose header is unreadable) is dropped
    whole; the drops are logged and summarised in ``dataset.info.description``.
    """
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(
            f"data folder {str(root)!r} does not exist: check the path (expected <data_dir>/<identity>/<image files>)"
        )
    if not root.is_dir():
        raise NotADirectoryError(
            f"data folder {str(root)!r} is a file, not a directory: pass the folder that contains one sub-folder per identity"
        )
    items = _scan(root, extensions)
    if not items:
        raise DatasetLayoutError(
            f"no images found under {str(root)!r} (looked for {', '.join(extensions)} in "
            f"sub-folders): expected <data_dir>/<identity>/<image files>"
        )
    layout = _resolve_layout(layout, items, root)
    if layout == "seed":
        rows = [(p, top, os.path.basename(p).rsplit("_", 1)[0]) for top, p in items]
    else:
        rows = [(p, top, top) for top, p in items]

    description = f"identity photos from {root.resolve()} (layout={layout})"
    if min_size is not None:
        bad = find_undersized_groups(rows, min_size)
        if bad:
            rows = [r for r in rows if (r[1], r[2]) not in bad]
            examples = []
            for (label, group), offenders in sorted(bad.items())[:5]:
                path, size = sorted(offenders.items())[0]
                shown = "unreadable" if size is None else f"{size[0]}x{size[1]}"
                examples.append(f"{label}/{group} ({os.path.basename(path)}: {shown})")
            summary = (
                f"excluded {len(bad)} group(s) with a photo smaller than {min_size}px or "
                f"unreadable: {'; '.join(examples)}{' ...' if len(bad) > 5 else ''}"
            )
            logger.warning("%s: %s", root, summary)
            description += f"; {summary}"
        if not rows:
            raise DatasetLayoutError(
                f"{str(root)!r}: every group has a photo smaller than min_size={min_size}: lower min_size or use larger photos"
            )
    _check_identity_count((r[1] for r in rows), repr(str(root)))
    return _rows_to_dataset(rows, description)


def dataset_from_dataframe(
    df: pd.DataFrame,
    x: str = "x",
    y: str = "y",
    group: str | None = None,
) -> datasets.Dataset:
    """Build the dataset from a table with one row per photo.

    ``x`` names the image-path column, ``y`` the identity column and ``group`` an
    optional grouping column (defaults to the identity). Paths are made absolute
    (relative ones are taken from the current directory) but not checked for
    existence; labels are converted to strings. Unlike the folder loader a single
    identity is accepted, e.g. for a gallery to search.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    wanted = [c for c in (x, y, group) if c is not None]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DatasetLayoutError(
            f"DataFrame has no column(s) {missing}; its columns are {list(df.columns)}. "
            f"Pass x=<image path column>, y=<identity column>" + (", group=<group column>" if group is not None else "")
        )
    if len(df) == 0:
        raise DatasetLayoutError("DataFrame is empty: it needs one row per photo")
    nulls = [c for c in wanted if df[c].isna().any()]
    if nulls:
        first = int(df[nulls[0]].isna().to_numpy().nonzero()[0][0])
        raise DatasetLayoutError(
            f"DataFrame column(s) {nulls} contain missing values (first at row position {first}): drop or fill those rows"
        )
    paths = [os.path.abspath(os.fspath(p)) for p in df[x]]
    labels = [str(v) for v in df[y]]
    groups = [str(v) for v in df[group]] if group is not None else labels
    return _rows_to_dataset(list(zip(paths, labels, groups)), "identity photos from a DataFrame")


def as_dataset(source: str | os.PathLike | pd.DataFrame | datasets.Dataset, **kw: Any) -> datasets.Dataset:
    """Normalise a folder path, DataFrame or Dataset to the (image_path, label, group) dataset.

    Keyword arguments go to :func:`load_identity_folder` or
    :func:`dataset_from_dataframe`. A Dataset must have ``image_path`` and
    ``label`` columns; a missing ``group`` column is filled with the label.
    """
    if isinstance(source, (str, os.PathLike)):
        return load_identity_folder(source, **kw)
    if isinstance(source, pd.DataFrame):
        return dataset_from_dataframe(source, **kw)
    if isinstance(source, datasets.Dataset):
        if kw:
            raise TypeError(f"as_dataset got options {sorted(kw)} that do not apply to a Dataset")
        missing = [c for c in ("image_path", "label") if c not in source.column_names]
        if missing:
            raise DatasetLayoutError(
                f"Dataset lacks column(s) {missing}; it has {source.column_names}. "
                f"Rename yours with dataset.rename_column(old, new)"
            )
        if source.features["image_path"] != datasets.Value("string"):
            raise DatasetLayoutError(
                f"Dataset column 'image_path' must hold file paths (strings), not "
                f"{source.features['image_path']}: store the paths, not decoded images"
            )
        label_feature = source.features["label"]
        if isinstance(label_feature, datasets.ClassLabel):
            # Identities are compared as strings everywhere (splits, pairs).
            names = [label_feature.int2str(int(i)) for i in column_values(source, "label")]
            source = source.remove_columns("label").add_column("label", names)
        elif label_feature != datasets.Value("string"):
            source = source.cast_column("label", datasets.Value("string"))
        if "group" not in source.column_names:
            source = source.add_column("group", column_values(source, "label"))
        return source
    raise TypeError(f"as_dataset expects a folder path, a pandas DataFrame or a datasets.Dataset, got {type(source).__name__}")
