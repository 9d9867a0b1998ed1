"""A screenshot of every dashboard tab, as a person sees it in Chromium: bench/screenshots/dashboard_<tab>.png.

    python scripts/screenshot_dashboard.py                       # the repository's shipped results, photos from ../shared/data
    python scripts/screenshot_dashboard.py --out /tmp/shots --port 8599

Starts `streamlit run app/dashboard.py` headless on a free port, opens it in Debian's chromium through Playwright
(`/usr/bin/chromium`, no browser download), clicks each tab, waits until its charts are drawn, and saves the
whole tab. On the embedding map it hovers over the points until the photo tooltip shows, so the picture shows it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app.dashboard_data import TABS  # the tab names the dashboard shows

ROOT = Path(__file__).resolve().parents[1]


CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 240_000  # a 2-core machine shared with training jobs can be slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(port: int, args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "dashboard.py"), "--server.headless", "true"]
    command += ["--server.port", str(port), "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    server = subprocess.Popen(
        command + (["--", *args] if args else []), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"streamlit exited with {server.returncode}: {server.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    server.terminate()
    raise SystemExit(f"streamlit did not answer on port {port} within 120 s")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def hover_until_tooltip(page, chart) -> bool:
    """Move the mouse over a grid of the chart until vega's tooltip (with the photo) appears."""
    box = chart.bounding_box()
    if box is None:
        return False
    for fy in (0.5, 0.35, 0.65, 0.2, 0.8):
        for fx in (0.5, 0.35, 0.65, 0.2, 0.8, 0.1, 0.9):
            for dx in range(-12, 13, 4):
                page.mouse.move(box["x"] + fx * box["width"] + dx, box["y"] + fy * box["height"])
                page.wait_for_timeout(60)
                if page.locator("#vg-tooltip-element.visible img").count():
                    page.wait_for_timeout(300)
                    return True
    return False


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "screenshots"))
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--dashboard-args", default="", help="passed after `--` to the dashboard, e.g. '--data DIR'")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    if not chromium:
        raise SystemExit("Debian's chromium is not installed: apt-get install -y chromium")
    port = args.port or free_port()
    server = start_dashboard(port, args.dashboard_args.split())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": args.width, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name=TABS[0]).wait_for()
            for name in TABS:
                page.get_by_role("tab", name=name).click()
                panel = page.locator('[role="tabpanel"]:not([hidden])')
                panel.wait_for()
                page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
                charts = panel.locator(".vega-embed")
                if charts.count():
                    charts.first.locator("canvas, svg").first.wait_for()
                page.wait_for_timeout(1500)  # vega's transitions and the images
                height = page.evaluate(
                    '() => Math.max(...[...document.querySelectorAll(\'[data-testid="stMain"], [data-testid="stAppViewContainer"], body\')]'
                    ".map(e => e.scrollHeight))"
                )
                page.set_viewport_size({"width": args.width, "height": min(max(int(height) + 40, 900), 7000)})
                page.wait_for_timeout(800)
                if name == "Embeddings" and charts.count():
                    charts.first.scroll_into_view_if_needed()
                    if not hover_until_tooltip(page, charts.first):
                        print("no photo tooltip on the embedding map (photos not found?)", flush=True)
                path = out / f"dashboard_{slug(name)}.png"
                page.screenshot(path=str(path), full_page=True)
                saved.append(path)
                print(f"{name}: {path} ({path.stat().st_size / 1e3:.0f} kB)", flush=True)
                page.set_viewport_size({"width": args.width, "height": 1000})
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return saved


if __name__ == "__main__":
    main()
