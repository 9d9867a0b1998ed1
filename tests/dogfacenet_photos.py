"""The real dogfacenet photos that tests/test_data_images.py and tests/test_data_pairs.py read (never write).

Plain names, not fixtures: each test file sets `pytestmark = needs_dogfacenet` itself, so the skip applies
to those files only.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

DOGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogfacenet"  # ../shared beside the clone

needs_dogfacenet = pytest.mark.skipif(not DOGS.is_dir(), reason="dogfacenet data not available")


def col(ds: datasets.Dataset, name: str) -> list:
    """Column `name` of `ds` as a list."""
    return list(ds[name][:])
