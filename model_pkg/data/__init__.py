"""Data handling: robust image loading, identity folders, identity splits, set-pair sampling, collation.

Names load on first use (PEP 562), as in ``model_pkg`` itself: the app needs ``ImageLoadError`` and
``load_image`` at start, not ``datasets`` and pandas (the folders, splits and pairs modules), which cost it
a few tenths of a second of its cold start (bench/README.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "CachedSetPairCollator": "collate",
    "SetPairCollator": "collate",
    "pad_sets": "collate",
    "IMAGE_EXTENSIONS": "folders",
    "DatasetLayoutError": "folders",
    "as_dataset": "folders",
    "dataset_from_dataframe": "folders",
    "find_undersized_groups": "folders",
    "load_identity_folder": "folders",
    "ImageLoadError": "images",
    "load_image": "images",
    "SetPair": "pairs",
    "group_paths": "pairs",
    "nearest_identities": "pairs",
    "pair_records": "pairs",
    "sample_pairs": "pairs",
    "SplitFileError": "splits",
    "get_or_create_splits": "splits",
    "load_splits": "splits",
    "save_splits": "splits",
    "split_identities": "splits",
    "subset_by_identities": "splits",
}

__all__ = [
    "CachedSetPairCollator",
    "DatasetLayoutError",
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "SetPair",
    "SetPairCollator",
    "SplitFileError",
    "as_dataset",
    "dataset_from_dataframe",
    "find_undersized_groups",
    "get_or_create_splits",
    "group_paths",
    "load_identity_folder",
    "load_image",
    "load_splits",
    "nearest_identities",
    "pad_sets",
    "pair_records",
    "sample_pairs",
    "save_splits",
    "split_identities",
    "subset_by_identities",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from .collate import CachedSetPairCollator, SetPairCollator, pad_sets
    from .folders import (
        IMAGE_EXTENSIONS,
        DatasetLayoutError,
        as_dataset,
        dataset_from_dataframe,
        find_undersized_groups,
        load_identity_folder,
    )
    from .images import ImageLoadError, load_image
    from .pairs import SetPair, group_paths, nearest_identities, pair_records, sample_pairs
    from .splits import (
        SplitFileError,
        get_or_create_splits,
        load_splits,
        save_splits,
        split_identities,
        subset_by_identities,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
