"""petmatch Gradio app: do two sets of photos show the same animal?

    python app/app.py                      # http://127.0.0.1:7860, offline, the shipped models/pair-matcher
    PETMATCH_PAIR_MODEL=<dir or Hub id> python app/app.py

The set-vs-set tab is here; the gallery and text-search tabs come with their models (issue 5).
Inference lives in the library (`match_sets`); this file is only the UI.
"""

from __future__ import annotations

import os
import sys

import gradio as gr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model_pkg.data import ImageLoadError  # noqa: E402
from model_pkg.pair_matcher import PairMatcherModel  # noqa: E402
from model_pkg.pair_matcher.pipeline import match_sets  # noqa: E402

PAIR_MODEL = os.environ.get("PETMATCH_PAIR_MODEL", os.path.join(ROOT, "models", "pair-matcher"))
MAX_PHOTOS = 20
DOGS = os.path.join(ROOT, "..", "shared", "data", "dogfacenet")

pair_model = PairMatcherModel.from_pretrained(PAIR_MODEL).eval()  # loaded once, at start


def _paths(files) -> list[str]:
    return [f if isinstance(f, str) else f.name for f in (files or [])]


def compare_sets(files_a, files_b) -> tuple[str, dict]:
    """Two uploads of 1-20 photos each -> a verdict line and the probability."""
    photos_a, photos_b = _paths(files_a), _paths(files_b)
    for side, photos in (("first", photos_a), ("second", photos_b)):
        if not photos:
            raise gr.Error(f"The {side} set is empty: upload at least one photo of each animal.")
        if len(photos) > MAX_PHOTOS:
            raise gr.Error(f"The {side} set has {len(photos)} photos; upload at most {MAX_PHOTOS}.")
    try:
        result = match_sets(pair_model, photos_a, photos_b)
    except (ImageLoadError, ValueError) as err:
        raise gr.Error(str(err)) from err
    i, j = divmod(int(result.photo_similarity.argmax()), len(photos_b))
    verdict = "Same animal" if result.same else "Different animals"
    text = (f"{verdict}: probability {result.probability:.1%} (threshold {result.threshold:.1%}). "
            f"Most alike: photo {i + 1} of the first set and photo {j + 1} of the second.")
    return text, {"same animal": result.probability, "different animals": 1 - result.probability}


def _examples() -> list[list[list[str]]]:
    if not os.path.isdir(DOGS):
        return []
    photos = lambda dog: [os.path.join(DOGS, dog, f) for f in sorted(os.listdir(os.path.join(DOGS, dog)))]  # noqa: E731
    return [[photos("0")[:2], photos("0")[2:4]], [photos("0")[:2], photos("5")[:2]]]


with gr.Blocks(title="petmatch") as demo:
    gr.Markdown("# petmatch\nIs this the same animal? Upload photos of a found animal and of a lost one.")
    with gr.Tab("Set vs set"):
        with gr.Row():
            set_a = gr.File(file_count="multiple", file_types=["image"], label="Photos of the first animal (1-20)")
            set_b = gr.File(file_count="multiple", file_types=["image"], label="Photos of the second animal (1-20)")
        button = gr.Button("Compare", variant="primary")
        verdict = gr.Textbox(label="Verdict")
        probability = gr.Label(label="Probability")
        button.click(compare_sets, inputs=[set_a, set_b], outputs=[verdict, probability], api_name="compare_sets")
        if _examples():
            gr.Examples(_examples(), inputs=[set_a, set_b])

if __name__ == "__main__":
    demo.launch()
