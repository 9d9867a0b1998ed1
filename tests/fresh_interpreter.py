"""`run_fresh`: run code in a new Python interpreter at the repository root, for checks of what importing does
(in the test process, model_pkg, transformers and gradio are long imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_fresh(code: str) -> dict:
    """Run `code` (dedented) in a new interpreter at the repository root, offline; it prints one JSON object as
    its last line, which is returned."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
