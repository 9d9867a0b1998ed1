"""The Gradio pages' layout: the set-vs-set, gallery and text-search tabs, for visitors ("public"), the public demo
("demo": registering into a private session gallery) and staff ("staff": register, edit, delete, the audit log).
What each button calls, and what was loaded, come in a :class:`PageHandlers` (`app/main.py` fills it in)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app.api_common import Services
from app.security import redact_paths
from app.session_gallery import close_session
from app.uploads import checked
from model_pkg.gallery_store.records import SPECIES

__all__ = ["PageHandlers", "build_demo"]


@dataclass
class PageHandlers:
    """The handlers the pages' buttons call (`app/main.py`), what the app loaded, and where the demo photos are."""

    compare_sets: Callable
    identify: Callable
    register: Callable
    register_in_session: Callable
    update_animal: Callable
    delete_animal: Callable
    audit_log: Callable
    search_text: Callable
    registered_animals: Callable[..., str]
    animal_choices: Callable[[], list[tuple[str, str]]]
    services: Services
    assets_dir: str


def _demo_photos(assets_dir: str, *parts: str) -> list[str]:
    folder = Path(assets_dir, "demo_photos", *parts)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*.jpg"))
    return [str(p) for p in files]


def _dogs(assets_dir: str, role: str) -> list[str]:
    folder = Path(assets_dir, "demo_photos", role)
    # numbered dogs first, in number order, then named ones (cat-birba, mpdd-56): a key of int or str alone fails on both
    return sorted(os.listdir(folder), key=lambda d: (0, int(d), "") if d.isdigit() else (1, 0, d)) if folder.is_dir() else []


def build_demo(mode: str, ui: PageHandlers) -> gr.Blocks:
    """The UI: "public" (visitors: match, identify, search), "demo" (the same, plus registering into a gallery
    private to the browser session; the app without staff keys) or "staff" (plus register, edit, delete and the
    audit log on the shared gallery; served at /staff/ behind Gradio's login)."""
    gallery_dogs, new_dogs = _dogs(ui.assets_dir, "gallery"), _dogs(ui.assets_dir, "new")
    staff = mode == "staff"
    # uploads and result copies older than an hour are removed hourly, so a long-running app does not fill the disk
    with gr.Blocks(title="petmatch (staff)" if staff else "petmatch", delete_cache=(3600, 3600)) as demo:
        intro = {
            "public": "Registering animals is for staff.",
            "demo": "This is a public demo: animals you register stay in a gallery only you see, gone when you close the page.",
            "staff": "**Staff page**: register, edit and delete animals in the shared gallery; every change is logged.",
        }[mode]
        gr.Markdown(
            "# petmatch\nIs this the same animal? Compare two photo sets, identify an animal in a gallery, "
            f"or search photos by description. {intro}"
        )
        session = gr.State(None, time_to_live=3600, delete_callback=close_session) if mode == "demo" else None
        with gr.Tab("Set vs set"):
            if ui.services.pair_model is None:
                gr.Markdown(f"**Set vs set unavailable:** {redact_paths(ui.services.pair_unavailable or '')}")
            with gr.Row():
                set_a = gr.File(
                    file_count="multiple", file_types=["image"], label="Photos of the first animal (1-20)", elem_id="set-a"
                )
                set_b = gr.File(
                    file_count="multiple", file_types=["image"], label="Photos of the second animal (1-20)", elem_id="set-b"
                )
            compare = gr.Button("Compare", variant="primary", elem_id="compare")
            verdict = gr.Textbox(label="Verdict", elem_id="verdict")
            probability = gr.Label(label="Probability")
            best_pair = gr.Gallery(
                label="What the intake saw (crops): the two photos that agree most first",
                columns=4,
                height=300,
                object_fit="contain",
                elem_id="best-pair",
            )
            top_pairs = gr.Dataframe(
                headers=["first set #", "photo", "second set #", "photo", "similarity"],
                label="Photo pairs that agree most",
                interactive=False,
            )
            compare.click(
                checked(ui.compare_sets, 0, 1),
                inputs=[set_a, set_b],
                outputs=[verdict, probability, best_pair, top_pairs],
                api_name="compare_sets",
            )
            if len(gallery_dogs) >= 2:
                same = (
                    _demo_photos(ui.assets_dir, "gallery", gallery_dogs[0]),
                    _demo_photos(ui.assets_dir, "queries", gallery_dogs[0]),
                )
                other = _demo_photos(ui.assets_dir, "gallery", gallery_dogs[1])
                gr.Examples([[same[0][:2], same[1][:2]], [same[0][:2], other[:2]]], inputs=[set_a, set_b])

        with gr.Tab("Gallery"):
            animals = gr.Markdown(ui.registered_animals())
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Identify")
                    # a File, not an Image: gr.Image decodes uploads itself, so a bad file would get its generic
                    # error instead of ours naming the file and the problem
                    query = gr.File(file_types=["image"], label="Photo of the animal to identify", elem_id="identify-photo")
                    identify_button = gr.Button("Identify", variant="primary", elem_id="identify")
                    if gallery_dogs and new_dogs:
                        gr.Examples(
                            [
                                _demo_photos(ui.assets_dir, "queries", gallery_dogs[0])[:1],
                                _demo_photos(ui.assets_dir, "new", new_dogs[0])[:1],
                            ],
                            inputs=[query],
                            label="A registered dog (new photo) / a dog not in the gallery",
                        )
                if mode != "public":
                    with gr.Column():
                        gr.Markdown("### Register" + (" (your private demo gallery)" if mode == "demo" else ""))
                        name = gr.Textbox(label="Name", placeholder="Bella", elem_id="register-name")
                        register_files = gr.File(
                            file_count="multiple", file_types=["image"], label="Photos (1-20)", elem_id="register-photos"
                        )
                        if staff:
                            species = gr.Dropdown(list(SPECIES), value="dog", label="Species")
                            note = gr.Textbox("", label="Staff note (never shown publicly, e.g. how to reach the finder)")
                            add_existing = gr.Checkbox(False, label="Add these photos to the registered animal of this name")
                        register_button = gr.Button("Register", elem_id="register")
                        register_status = gr.Textbox(label="Registration", elem_id="register-status")
                        if len(new_dogs) >= 2:
                            gr.Examples(
                                [["Rex", _demo_photos(ui.assets_dir, "new", new_dogs[1])[:3]]], inputs=[name, register_files]
                            )
            answer = gr.Textbox(label="Answer", elem_id="answer")
            matches = gr.Gallery(
                label="Top matches (best photo of each animal)", columns=5, height=260, object_fit="contain", elem_id="matches"
            )
            details = gr.JSON(label="Details")
            if mode == "demo":
                identify_button.click(
                    checked(ui.identify, 0), inputs=[query, session], outputs=[answer, matches, details], api_name="identify"
                )
                register_button.click(
                    checked(ui.register_in_session, 1),
                    inputs=[name, register_files, session],
                    outputs=[register_status, animals, session],
                    api_name="register",
                )
            else:
                identify_button.click(
                    checked(ui.identify, 0), inputs=query, outputs=[answer, matches, details], api_name="identify"
                )
            if staff:
                register_button.click(
                    checked(ui.register, 1),
                    inputs=[name, register_files, species, note, add_existing],
                    outputs=[register_status, animals],
                    api_name="register",
                )
                build_staff_tools(animals, ui)

        with gr.Tab("Text search"):
            build_text_search_tab(ui)
    return demo


def build_staff_tools(animals: gr.Markdown, ui: PageHandlers) -> None:
    """Edit, delete and the audit log, under the gallery tab of the staff page."""
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Edit an animal")
            # ids are checked by the gallery (unknown: a clear error), so a script may pass any id
            edit_id = gr.Dropdown(ui.animal_choices(), value=None, label="Animal", elem_id="edit-animal", allow_custom_value=True)
            new_name = gr.Textbox(label="New name (empty: unchanged)")
            new_species = gr.Dropdown(["", *SPECIES], value="", label="Species (empty: unchanged)")
            new_note = gr.Textbox(label="Staff note (replaces the old one)")
            save = gr.Button("Save")
            edit_status = gr.Textbox(label="Edit")
        with gr.Column():
            gr.Markdown("### Delete an animal")
            delete_id = gr.Dropdown(
                ui.animal_choices(), value=None, label="Animal", elem_id="delete-animal", allow_custom_value=True
            )
            confirm = gr.Checkbox(False, label="Yes, delete it and its photos")
            delete = gr.Button("Delete", variant="stop")
            delete_status = gr.Textbox(label="Delete")
    save.click(
        checked(ui.update_animal),
        inputs=[edit_id, new_name, new_species, new_note],
        outputs=[edit_status, animals, edit_id],
        api_name="update_animal",
    )
    delete.click(
        checked(ui.delete_animal),
        inputs=[delete_id, confirm],
        outputs=[delete_status, animals, delete_id],
        api_name="delete_animal",
    )
    for dropdown in (edit_id, delete_id):  # the animals as they are when the page is opened
        dropdown.focus(lambda: gr.update(choices=ui.animal_choices()), outputs=dropdown, api_name=False)
    gr.Markdown("### Audit log (newest first)")
    refresh = gr.Button("Refresh")
    log_table = gr.Dataframe(headers=["when (UTC)", "who", "what", "animal id", "name"], interactive=False)
    refresh.click(checked(ui.audit_log), inputs=None, outputs=log_table, api_name="audit_log")


def build_text_search_tab(ui: PageHandlers) -> None:
    """The text-search tab: a description, how many photos, the best matching photos."""
    if ui.services.text_loaded.is_set() and ui.services.text is None:  # known at start: no model there to load
        gr.Markdown(f"**Text search unavailable:** {redact_paths(ui.services.text_unavailable or '')}")
    query = gr.Textbox(label="Describe the photo", placeholder="a brown dog running on the grass", elem_id="text-query")
    top_k = gr.Slider(1, 24, value=8, step=1, label="Photos to show")
    button = gr.Button("Search", variant="primary")
    results = gr.Gallery(label="Best matching photos (score)", columns=4, height="auto", elem_id="text-results")
    button.click(checked(ui.search_text), inputs=[query, top_k], outputs=results, api_name="search_text")
    gr.Examples([["a dog running on the grass", 8], ["two children playing in the water", 8]], inputs=[query, top_k])
