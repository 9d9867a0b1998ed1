"""The code checks of issue 19 run with the tests, so the README's one test command does everything:
`ruff check` (pycodestyle, pyflakes, import order, pyupgrade, bugbear; configured in pyproject.toml),
`ruff format --check` and `mypy` over `model_pkg/`. Fix findings with `ruff check --fix . && ruff format .`.
`.ci/run` runs the same checks first, timed, and sets PETMATCH_CHECKS_DONE=1 so they do not run twice."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.environ.get("PETMATCH_CHECKS_DONE") == "1", reason=".ci/run ran these checks before the tests")


def _run(tool: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} is not installed: pip install -r requirements.txt")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_lint_passes():
    result = _run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted():
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr


def test_types_check():
    result = _run("mypy", timeout=900)  # files and options: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr
