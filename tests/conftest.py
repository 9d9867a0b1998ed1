"""Shared fixtures.

Real photos that ship with the repository are in `tests/photos/` (`PHOTOS`, the `dog_faces` fixture; see its README): every
test that needs real pets or captioned photos reads them there, so a plain clone runs it. Only the few dataset-scale
tests (the whole DogFaceNet's split sizes, the dashboard's photos of the held-out dogs it plots) read `<repo>/../shared/data` (CI clones
the repository with `shared/` beside it): they take the `shared_data` fixture and are skipped, with the one reason
`DATASET_SCALE_SKIP`, when that folder is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PHOTOS = REPO_ROOT / "tests" / "photos"
DATASET_SCALE_SKIP = "dataset-scale test: needs the full data in ../shared/data beside the repository"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data`, for a dataset-scale test; skipped (`DATASET_SCALE_SKIP`) when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{DATASET_SCALE_SKIP} (no {SHARED_DATA.name} folder at ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dog_faces() -> Path:
    """`tests/photos/dog_faces`: aligned DogFaceNet faces, one folder per dog, laid out as `../shared/data/dogfacenet`."""
    return PHOTOS / "dog_faces"


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """Make the Hugging Face Hub unreachable and its cache empty for this test.

    huggingface_hub reads HF_HUB_OFFLINE and the cache location once at import time, so the env
    variable alone is not enough once it is imported: patch its constants too.
    """
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's tiny models on one CPU thread.

    Their ops are far too small to gain from intra-op parallelism, and on a busy machine (a training
    job on the same cores) torch's thread pool spends most of its time waiting: one thread is several
    times faster there. The previous setting is restored afterwards.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# In CI (`CI=true`) a test skipped because data or a browser is missing is a failure: CI clones the repository with
# shared/ beside it and installs chromium, so such a skip means the set-up broke, and a green run would hide it. The
# skips `.ci/run` asks for itself (the code checks it ran before the tests, PETMATCH_CHECKS_DONE) stay skips.
_CI_ALLOWED_SKIPS = (".ci/run ran these checks before the tests",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes") or not report.skipped:
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(allowed in reason for allowed in _CI_ALLOWED_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {reason}"
