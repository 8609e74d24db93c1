"""The running app in headless Chromium (the system package, driven by Playwright): every page renders cleanly.

One screenshot per page is saved under the test project's ``reports/screenshots/``. Chromium comes from the
system packages (``make sysdeps``), never from a Playwright download; without it this test fails, it does not skip.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Page

# URL path -> the page's title (its h1)
PAGES = {"": "Overview", "models": "Models", "gate": "Deployment gate", "data-quality": "Data quality",
         "recommendations": "Recommendations explorer", "items": "Item explorer", "experiments": "Experiments"}
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
START_TIMEOUT_S = 60
RENDER_TIMEOUT_MS = 60_000
CHART_DRAW_MS = 700
VIEWPORT = {"width": 1440, "height": 1000}
MAX_SHOT_HEIGHT = 8000
# an exception name such as KeyError or StreamlitAPIException, or a Python traceback, anywhere on the page
FAILURE_TEXT = re.compile(r"Traceback|\b\w*(Error|Exception)\b")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `make sysdeps` (installs it with apt-get), then re-run the tests")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def streamlit_app(root: Path, log: Path) -> Iterator[str]:
    """``streamlit run dashboard/app.py`` on a free loopback port, serving ``root``; its URL once healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"SHOPREC_ROOT": str(root)}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.address", "127.0.0.1",
             "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"streamlit exited with code {server.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit not healthy after {START_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_rendered(page: Page, title: str) -> None:
    """The page's title is drawn, its script run is over (Streamlit marks the app root), and charts had time to draw."""
    page.locator("h1", has_text=title).wait_for(timeout=RENDER_TIMEOUT_MS)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=RENDER_TIMEOUT_MS)
    page.locator('[data-testid="stSkeleton"]').first.wait_for(state="detached", timeout=RENDER_TIMEOUT_MS)
    page.wait_for_timeout(CHART_DRAW_MS)


def screenshot(page: Page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main container, so the window is made as tall as its content."""
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(int(height) + 40, MAX_SHOT_HEIGHT)})
    page.wait_for_timeout(CHART_DRAW_MS)
    page.screenshot(path=str(path))


def test_every_page_renders_in_chromium(project: Path, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    executable = chromium()
    shots = project / "reports" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with streamlit_app(project, tmp_path / "streamlit.log") as app_url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            for path, title in PAGES.items():
                page.set_viewport_size(VIEWPORT)
                page.goto(f"{app_url}/{path}")
                wait_until_rendered(page, title)
                assert page.locator('[data-testid="stException"]').count() == 0, f"/{path}: exception shown"
                body = page.locator("body").inner_text()
                found = FAILURE_TEXT.search(body)
                assert found is None, f"/{path}: {found.group(0)!r} on the page:\n{body[:3000]}"
                assert page.locator("h1", has_text=title).is_visible()
                shot = shots / f"{path or 'overview'}.png"
                screenshot(page, shot)
                print(f"screenshot of /{path}: {shot}")
        finally:
            browser.close()
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(f"{p or 'overview'}.png" for p in PAGES)
