"""Data handling: robust image loading, identity folders, identity splits, set-pair sampling, collation."""

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
from .pairs import SetPair, group_paths, nearest_identities, sample_pairs
from .splits import (
    SplitFileError,
    get_or_create_splits,
    load_splits,
    save_splits,
    split_identities,
    subset_by_identities,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "CachedSetPairCollator",
    "DatasetLayoutError",
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
    "sample_pairs",
    "save_splits",
    "split_identities",
    "subset_by_identities",
]
