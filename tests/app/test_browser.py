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

from tests.app_server import REPO_ROOT, app_module, app_url  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO_ROOT / "bench" / "screenshots"
TIMEOUT_MS = 180_000  # a 2-core machine shared with training jobs can be slow


@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium"))
        yield browser
        browser.close()


def new_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def page(browser):
    page = new_page(browser, app_url())
    yield page
    page.close()


def photos(dog_faces, dog):
    folder = dog_faces / dog  # tests/photos/dog_faces: test-split dogs, never trained on
    return [str(folder / f) for f in sorted(os.listdir(folder))]


def test_set_vs_set_in_the_browser(page, dog_faces):
    dog0 = photos(dog_faces, "327")
    page.locator("#set-a input[type=file]").set_input_files(dog0[:2])
    page.locator("#set-b input[type=file]").set_input_files(dog0[2:4])
    page.locator("#compare").click()
    verdict = page.locator("#verdict textarea")
    playwright.expect(verdict).to_have_value(re.compile(r"^Same animal: probability"), timeout=TIMEOUT_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "set_vs_set.png"), full_page=True)


def test_gallery_in_the_browser(page):
    demo = os.path.join(app_module().SETTINGS.assets_dir, "demo_photos", "queries")
    dog = sorted((d for d in os.listdir(demo) if d.isdigit()), key=int)[0]
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
    """The shipped dual encoder and text index answer, and the photos they show load (they ship with the repository)."""
    page.get_by_role("tab", name="Text search").click()
    text, why = app_module().wait_for_text_search()
    assert text is not None, why
    page.locator("#text-query textarea").fill("a dog running on the grass")
    page.get_by_role("button", name="Search").click()
    playwright.expect(page.locator("#text-results img").first).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#text-results img')].filter(i => i.complete && i.naturalWidth > 0).length >= 3"
    )
    page.screenshot(path=str(SHOTS / "text_search.png"), full_page=True)


def test_staff_page_login_and_register_in_the_browser(browser, dog_faces):
    """Issue 33: /staff/ asks for a login (any user name, a staff key as the password); a wrong key is refused; with
    the key, a registration lands in the shared gallery and names the animal's id."""
    from tests.app_server import STAFF_KEY

    page = new_page(browser, app_url() + "/staff/")
    try:
        page.get_by_label("username").fill("ada")
        page.get_by_label("password").fill("not-the-key-0123456789")
        page.get_by_role("button", name="Login").click()
        playwright.expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
        page.goto(app_url() + "/staff/")
        page.get_by_label("username").fill("ada")
        page.get_by_label("password").fill(STAFF_KEY)
        page.get_by_role("button", name="Login").click()
        page.get_by_role("tab", name="Gallery").click()
        page.locator("#register-name textarea, #register-name input").first.fill("Browser Dog")
        page.locator("#register-photos input[type=file]").set_input_files(photos(dog_faces, "438")[:2])
        page.locator("#register").click()
        status = page.locator("#register-status textarea")
        playwright.expect(status).to_have_value(
            re.compile(r"^Registered 2 photo\(s\) of Browser Dog.*\(id a"), timeout=TIMEOUT_MS
        )
        page.screenshot(path=str(SHOTS / "staff_gallery.png"), full_page=True)
    finally:
        page.close()
    record = app_module().gallery.find_name("Browser Dog")
    assert record is not None and record.registered_by == f"ui ada ({app_module().STAFF.who(STAFF_KEY)})"


def test_demo_visitor_registers_privately_in_the_browser(browser, dog_faces):
    """Issue 33, the app without keys (the Space): a visitor registers on / into a gallery only their page sees; a
    second visitor's page lists the shared animals only."""
    from tests.app_server import demo_url

    visitor, other = new_page(browser, demo_url()), new_page(browser, demo_url())
    try:
        visitor.get_by_role("tab", name="Gallery").click()
        visitor.locator("#register-name textarea, #register-name input").first.fill("Visitor Dog")
        visitor.locator("#register-photos input[type=file]").set_input_files(photos(dog_faces, "460")[:2])
        visitor.locator("#register").click()
        status = visitor.locator("#register-status textarea")
        playwright.expect(status).to_have_value(re.compile(r"in your private demo gallery"), timeout=TIMEOUT_MS)
        playwright.expect(visitor.get_by_text("Visitor Dog (2)")).to_be_visible()
        visitor.screenshot(path=str(SHOTS / "demo_gallery.png"), full_page=True)
        other.get_by_role("tab", name="Gallery").click()
        playwright.expect(other.get_by_text("registered animals")).to_be_visible()
        assert "Visitor Dog" not in other.content()
    finally:
        visitor.close()
        other.close()
    assert "Visitor Dog" not in app_module().gallery.names
