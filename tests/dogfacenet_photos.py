"""The dog faces that tests/data/test_data_images.py and tests/data/test_data_pairs.py read (never write).

`DOGS` is `tests/photos/dog_faces` (22 DogFaceNet dogs that ship with the repository, laid out as the full set:
`<dog>/<dog>.<n>.jpg`), so these tests run on any clone. `FULL_DOGS` is the full DogFaceNet in `../shared/data`, read
only by the dataset-scale tests (its split sizes), which take the `shared_data` fixture and skip without it.
"""

from __future__ import annotations

from pathlib import Path

import datasets

TESTS = Path(__file__).resolve().parent
DOGS = TESTS / "photos" / "dog_faces"
FULL_DOGS = TESTS.parents[1] / "shared" / "data" / "dogfacenet"  # ../shared beside the clone


def col(ds: datasets.Dataset, name: str) -> list:
    """Column `name` of `ds` as a list."""
    return list(ds[name][:])
