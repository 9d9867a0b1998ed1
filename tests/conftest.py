"""Shared fixtures.

The real photos the backbone tests classify live outside the repository, in `<repo>/../shared/data`
(CI clones the repository with `shared/` beside it). Tests that need them take the `shared_data`
fixture and are skipped, with the reason, when that folder is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# `pytest` (not only `python -m pytest`) must be able to import model_pkg from the checkout.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data`, or skip the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data folder {SHARED_DATA} is missing: clone/copy the project's shared/ folder "
            "next to the repository to run the tests on real photos"
        )
    return SHARED_DATA


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
