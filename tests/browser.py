"""Chromium, driven by Playwright, for the tests of the browser's pages.

Debian's chromium is used (``/usr/bin/chromium``; Playwright's own browser download is never
needed). When it or Playwright is missing the tests are skipped with the reason, unless
ANALYTICS_TEST_E2E=required (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tests.e2e import E2E_REQUIRED, require_tool

CHROMIUM = "/usr/bin/chromium"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module's tests; each test opens its own context."""
    require_tool("chromium", CHROMIUM, install="apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if E2E_REQUIRED:
            pytest.fail(
                "playwright is not installed and ANALYTICS_TEST_E2E=required", pytrace=False
            )
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@dataclass
class Watched:
    """A page whose requests to other hosts are blocked and recorded, with its console errors."""

    page: object
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.blocked == [], "requests to other hosts"
        assert self.errors == [], "console errors"


def watched_page(browser, **context_options) -> Watched:
    """A page in a new context (en-US, a phone or desktop viewport as given) that fails no
    request itself but aborts and records every request to a host other than this machine."""
    context = browser.new_context(locale="en-US", **context_options)
    watched = Watched(context.new_page())

    def route(route):
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            watched.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", route)

    def on_console(message):
        # The browser's own report of an HTTP status (a 401 asking for a key, a 404 for an
        # endpoint this server lacks) is an answer the page handles, not an error of the page.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            watched.errors.append(message.text)

    watched.page.on("console", on_console)
    watched.page.on("pageerror", lambda error: watched.errors.append(str(error)))
    return watched


def wait_for(condition, timeout: float = 20.0, interval: float = 0.2):
    """Poll ``condition()`` until it returns something truthy; that value, or an
    AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {condition.__doc__ or condition}")
        time.sleep(interval)


class StaticSite:
    """Another origin (http://localhost:<its port>) serving one HTML page, in a thread."""

    def __init__(self, html: str = ""):
        self.html = html  # what the page is; may be changed while the site runs
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = site.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
