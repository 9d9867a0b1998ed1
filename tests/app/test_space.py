"""What a Hugging Face Space needs: front matter, requirements, and an entry file that builds the demo."""

from __future__ import annotations

import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def front_matter(path: str) -> dict:
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    assert text.startswith("---\n"), f"{path} must start with the Spaces YAML front matter"
    return yaml.safe_load(text.split("---\n")[1])


def pins() -> dict[str, str]:
    lines = open(os.path.join(ROOT, "requirements-runtime.txt")).read().split()
    return dict(line.split("==") for line in lines)


@pytest.mark.parametrize(
    "readme, sdk, entry",
    [("spaces/README.md", "gradio", "app/main.py"), ("spaces/dashboard/README.md", "streamlit", "app/dashboard.py")],
)
def test_front_matter(readme, sdk, entry):
    meta = front_matter(readme)
    assert meta["sdk"] == sdk and meta["app_file"] == entry and os.path.isfile(os.path.join(ROOT, entry))
    assert meta["sdk_version"] == pins()[sdk], "the Space's SDK must be the version requirements-runtime.txt pins"
    assert meta["python_version"] == "3.11" and isinstance(meta["python_version"], str)
    assert meta["models"] and all(m.count("/") == 1 for m in meta["models"])
    for key in ("title", "emoji", "colorFrom", "colorTo", "license"):
        assert meta[key]


def test_space_requirements_are_the_project_pins():
    space = open(os.path.join(ROOT, "spaces", "requirements.txt")).read().split()
    assert space and set(space) <= {f"{k}=={v}" for k, v in pins().items()}
    assert {"gradio", "streamlit", "torch", "timm", "transformers", "faiss-cpu"} <= {line.split("==")[0] for line in space}


def test_entry_imports_and_builds_the_demo():
    gr = pytest.importorskip("gradio")
    from tests.app_server import app_module

    app = app_module()
    assert isinstance(app.demo, gr.Blocks)
    tabs = [block.label for block in app.demo.blocks.values() if isinstance(block, gr.Tab)]
    assert tabs == ["Set vs set", "Gallery", "Text search"]
