"""A person in a browser: Debian's chromium driven by Playwright uploads photos, clicks and reads the answer.

Needs /usr/bin/chromium (`.ci/run` installs it with apt; no browser download). Screenshots of each tab go to
bench/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements.txt (playwright)")

from app_server import REPO_ROOT, app_module, app_url  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO_ROOT / "bench" / "screenshots"
TIMEOUT_MS = 180_000  # a 2-core machine shared with training jobs can be slow


@pytest.fixture(scope="module")
def page():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    url = app_url()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium"))
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        yield page
        browser.close()


def photos(shared_data, dog):
    folder = shared_data / "dogfacenet" / dog
    return [str(folder / f) for f in sorted(os.listdir(folder))]


def test_set_vs_set_in_the_browser(page, shared_data):
    dog0 = photos(shared_data, "0")
    page.locator("#set-a input[type=file]").set_input_files(dog0[:2])
    page.locator("#set-b input[type=file]").set_input_files(dog0[2:4])
    page.locator("#compare").click()
    verdict = page.locator("#verdict textarea")
    playwright.expect(verdict).to_have_value(re.compile(r"^Same animal: probability"), timeout=TIMEOUT_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "set_vs_set.png"), full_page=True)


def test_gallery_in_the_browser(page):
    demo = os.path.join(app_module().SETTINGS.assets_dir, "demo_photos", "queries")
    dog = sorted(os.listdir(demo), key=int)[0]
    photo = os.path.join(demo, dog, sorted(os.listdir(os.path.join(demo, dog)))[0])
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#identify-photo input[type=file]").set_input_files(photo)
    page.locator("#identify").click()
    playwright.expect(page.locator("#answer textarea")).to_have_value(re.compile(r"^Identified: "), timeout=TIMEOUT_MS)
    # the match thumbnails are served and decoded, not broken links
    page.wait_for_function(
        "() => [...document.querySelectorAll('#matches img')].filter(i => i.complete && i.naturalWidth > 0).length >= 3"
    )
    page.screenshot(path=str(SHOTS / "gallery.png"), full_page=True)


def test_text_search_tab_in_the_browser(page):
    page.get_by_role("tab", name="Text search").click()
    if app_module().wait_for_text_search()[0] is None:
        playwright.expect(page.get_by_text("Text search unavailable:")).to_be_visible()
    else:
        page.locator("#text-query textarea").fill("a dog running on the grass")
        page.get_by_role("button", name="Search").click()
        playwright.expect(page.locator("#text-results img").first).to_be_visible(timeout=TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "text_search.png"), full_page=True)
