"""`app.gradio_import`: gradio imported without re-deriving its component stubs, and the UI still works.

Run in a fresh interpreter: in this one, gradio may be imported already (then there is nothing to skip)."""

from __future__ import annotations

from tests.fresh_interpreter import run_fresh

CODE = """
    import json, sys
    from app.gradio_import import STUB_FUNCTION, STUB_MODULE, skip_stub_regeneration
    from model_pkg.lazy import AfterImport

    def hooks():
        return sum(isinstance(f, AfterImport) and STUB_MODULE in f.modules for f in sys.meta_path)

    armed = skip_stub_regeneration()
    armed_twice = skip_stub_regeneration()
    hooks_before = hooks()
    import gradio as gr
    import gradio.component_meta as meta
    with gr.Blocks() as demo:
        button, box = gr.Button("go"), gr.Textbox()
        button.click(lambda: "done", outputs=box, api_name="go")
    print(json.dumps({
        "armed": armed,
        "armed_twice": armed_twice,
        "hooks_before": hooks_before,
        "stub_step": getattr(meta, STUB_FUNCTION).__name__,
        "hooks_after": hooks(),
        "api_names": [d.get("api_name") for d in demo.config["dependencies"]],
        "too_late": skip_stub_regeneration(),
    }))
"""


def test_gradio_imports_without_the_stub_step_and_builds_a_ui():
    out = run_fresh(CODE)
    assert out == {
        "armed": True,
        "armed_twice": True,
        "hooks_before": 1,  # one hook, however often it is asked
        "stub_step": "_keep_shipped_stub",
        "hooks_after": 0,  # it leaves sys.meta_path once the one module has run
        "api_names": ["go"],
        "too_late": False,  # gradio imported: nothing left to skip
    }
