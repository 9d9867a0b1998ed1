"""Issue 32 in a browser: whole dogs and a cat's phone photo through the production server, with what the intake saw
beside each answer. Screenshots go to bench/screenshots/ (set_vs_set_whole_dogs.png, gallery_cat_photo.png)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements.txt (playwright)")

from app_server import app_module, app_url  # noqa: E402
from PIL import Image  # noqa: E402
from test_browser import SHOTS, TIMEOUT_MS, browser, new_page  # noqa: E402, F401  (browser: the shared fixture)

PHOTOS = Path(__file__).parent / "photos"


def test_whole_dogs_set_vs_set_shows_the_crops(browser):  # noqa: F811
    page = new_page(browser, app_url())
    try:
        dog = sorted((PHOTOS / "whole_dogs" / "100").glob("*.jpg"))
        page.locator("#set-a input[type=file]").set_input_files([str(p) for p in dog[:2]])
        page.locator("#set-b input[type=file]").set_input_files([str(dog[2])])
        page.locator("#compare").click()
        verdict = page.locator("#verdict textarea")
        playwright.expect(verdict).to_have_value(re.compile(r"^Same animal: .*decided as whole dogs"), timeout=TIMEOUT_MS)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#best-pair img')].filter(i => i.complete && i.naturalWidth > 0).length >= 3"
        )
        page.screenshot(path=str(SHOTS / "set_vs_set_whole_dogs.png"), full_page=True)
    finally:
        page.close()


def test_a_cat_phone_photo_is_identified_in_the_browser(browser, tmp_path):  # noqa: F811
    queries = Path(app_module().SETTINGS.assets_dir) / "demo_photos" / "queries" / "cat-tigro"
    photo = next(p for p in sorted(queries.glob("*.jpg")) if p.name.startswith("t"))
    # a full-resolution phone photo: the cat in a 4,032 x 3,024 scene
    scene = Image.new("RGB", (4032, 3024), (214, 204, 188))
    cat = Image.open(photo).convert("RGB")
    scene.paste(cat.resize((cat.width * 3, cat.height * 3)), (1400, 500))
    phone = tmp_path / "IMG_0042.jpg"
    scene.save(phone, quality=90)
    page = new_page(browser, app_url())
    try:
        page.get_by_role("tab", name="Gallery").click()
        page.locator("#identify-photo input[type=file]").set_input_files(str(phone))
        page.locator("#identify").click()
        playwright.expect(page.locator("#answer textarea")).to_have_value(re.compile(r"^Identified: Tigro"), timeout=TIMEOUT_MS)
        playwright.expect(page.get_by_text("your photo, as the intake saw it")).to_be_visible()
        page.screenshot(path=str(SHOTS / "gallery_cat_photo.png"), full_page=True)
    finally:
        page.close()
