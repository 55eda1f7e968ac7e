"""The browser the console tests drive: Debian's Chromium through Playwright, headless, local only.

A page served by a real HTTP server on 127.0.0.1 is loaded, clicked and photographed; the
browser must be the Chromium the system package installed (same version as `chromium
--version`), never one Playwright downloaded.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.fixtures.browser import VIEWPORT, Screenshots

PAGE = b"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>sealgw</title></head>
<body><h1 data-testid="title">\xe5\x8f\xb0\xe5\x8c\xba district-1</h1>
<button data-testid="ack" onclick="this.textContent='acknowledged'">acknowledge</button>
</body></html>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def local_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_browser_is_debians_chromium(browser: Browser, chromium_executable: Path) -> None:
    done = subprocess.run(
        [str(chromium_executable), "--version"], capture_output=True, text=True, timeout=30,
        check=True,
    )  # fmt: skip
    system = re.search(r"(\d+\.\d+\.\d+\.\d+)", done.stdout)
    assert system is not None, done.stdout
    assert browser.version == system.group(1), (browser.version, done.stdout)


def test_a_local_page_renders_clicks_and_photographs(
    browser: Browser, local_url: str, tmp_path: Path
) -> None:
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(local_url, timeout=15_000)
        expect(page.get_by_test_id("title")).to_have_text("台区 district-1", timeout=5_000)
        assert "HeadlessChrome" in page.evaluate("navigator.userAgent")
        page.get_by_test_id("ack").click(timeout=5_000)
        expect(page.get_by_test_id("ack")).to_have_text("acknowledged", timeout=5_000)
        shot = Screenshots(tmp_path).take(page, "chromium-smoke", full_page=False)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        context.close()
