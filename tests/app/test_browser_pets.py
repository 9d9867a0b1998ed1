"""Issue 32 in a browser: whole dogs and a cat's phone photo through the production server, with what the intake saw
beside each answer. Screenshots go to bench/screenshots/ (set_vs_set_whole_dogs.png, set_vs_set_cat_phone_photo.png)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements.txt (playwright)")

from PIL import Image  # noqa: E402

from tests.app.test_browser import SHOTS, TIMEOUT_MS, browser, new_page  # noqa: E402, F401  (browser: the shared fixture)
from tests.app_server import app_url  # noqa: E402

PHOTOS = Path(__file__).parents[1] / "photos"


def compare_in_the_browser(chromium, set_a: list[str], set_b: list[str], verdict_pattern: str, screenshot: str) -> None:
    """Upload two sets on the production server's page, wait for the verdict and for the intake's crops (at least 3
    images decoded), then take a screenshot."""
    page = new_page(chromium, app_url())
    try:
        page.locator("#set-a input[type=file]").set_input_files(set_a)
        page.locator("#set-b input[type=file]").set_input_files(set_b)
        page.locator("#compare").click()
        verdict = page.locator("#verdict textarea")
        playwright.expect(verdict).to_have_value(re.compile(verdict_pattern), timeout=TIMEOUT_MS)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#best-pair img')].filter(i => i.complete && i.naturalWidth > 0).length >= 3"
        )
        page.screenshot(path=str(SHOTS / screenshot), full_page=True)
    finally:
        page.close()


def test_whole_dogs_set_vs_set_shows_the_crops(browser):  # noqa: F811
    dog = [str(p) for p in sorted((PHOTOS / "whole_dogs" / "100").glob("*.jpg"))]
    compare_in_the_browser(browser, dog[:2], dog[2:3], r"^Same animal: .*decided as whole dogs", "set_vs_set_whole_dogs.png")


def test_a_cats_full_resolution_phone_photo_in_the_browser(browser, tmp_path):  # noqa: F811
    """A 4,032 x 3,024 phone photo of a cat against two other photos of it: the intake cuts the cat out of the scene
    (the crop is shown), and the shipped pair matcher decides the pair as cats."""
    tigro = sorted((PHOTOS / "cat_photos" / "tigro").glob("*.jpg"))
    scene = Image.new("RGB", (4032, 3024), (214, 204, 188))
    cat = Image.open(tigro[0]).convert("RGB")
    scene.paste(cat.resize((cat.width * 3, cat.height * 3)), (1400, 500))
    phone = tmp_path / "IMG_0042.jpg"
    scene.save(phone, quality=90)
    others = [str(p) for p in tigro[1:3]]
    compare_in_the_browser(browser, [str(phone)], others, r"^Same animal: .*decided as cats", "set_vs_set_cat_phone_photo.png")
