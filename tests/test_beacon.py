"""In Chromium (Debian's, driven by Playwright): a page on another origin sends events the ways
browsers do, and each is stored. A JSON Blob sent with navigator.sendBeacon goes in credentials
mode, as does a fetch with credentials: "include"; neither is accepted with
Access-Control-Allow-Origin: *, so the ingest endpoints echo the Origin."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from conftest import LiveServer, empty_tables
from e2e import require_tool
from sqlalchemy import create_engine, select

from analytics.models import Event

pytestmark = pytest.mark.live

CHROMIUM = "/usr/bin/chromium"
PAGE = b"<!doctype html><title>analytics beacon test</title>"


@pytest.fixture(scope="module")
def api(sqlite_url):
    server = LiveServer(sqlite_url, workers=1).start()
    yield server
    server.stop()
    empty_tables(sqlite_url)


@pytest.fixture(scope="module")
def page_origin():
    """A page served from http://localhost:<port>: another origin than the API's 127.0.0.1."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page(page_origin):
    require_tool("chromium", CHROMIUM, install="apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        page.goto(page_origin)
        yield page
        browser.close()


def stored_users(sqlite_url, wanted: set[str], timeout: float = 15) -> set[str]:
    """The user_ids of ``wanted`` that are stored, waiting for a beacon's late delivery."""
    engine = create_engine(sqlite_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                found = set(conn.scalars(select(Event.user_id).where(Event.user_id.in_(wanted))))
            if found == wanted or time.monotonic() > deadline:
                return found
            time.sleep(0.2)
    finally:
        engine.dispose()


def test_a_json_blob_beacon_is_stored(api, page, sqlite_url):
    queued = page.evaluate(
        """api => navigator.sendBeacon(api + "/track", new Blob(
        [JSON.stringify({event: "play", user_id: "beacon-json-blob"})],
        {type: "application/json"}))""",
        api.url,
    )
    assert queued is True
    assert stored_users(sqlite_url, {"beacon-json-blob"}) == {"beacon-json-blob"}


def test_a_fetch_with_credentials_is_stored_and_readable(api, page, sqlite_url):
    answer = page.evaluate(
        """async api => {
        const response = await fetch(api + "/track/batch", {
            method: "POST", credentials: "include",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({events: [{event: "play", user_id: "fetch-credentials"}]})});
        return {status: response.status, body: await response.json()};
    }""",
        api.url,
    )
    assert answer["status"] == 200
    assert answer["body"]["accepted"] == 1
    assert stored_users(sqlite_url, {"fetch-credentials"}) == {"fetch-credentials"}


def test_a_text_beacon_is_stored(api, page, sqlite_url):
    queued = page.evaluate(
        """api => navigator.sendBeacon(api + "/track",
        JSON.stringify({event: "play", user_id: "beacon-text"}))""",
        api.url,
    )
    assert queued is True
    assert stored_users(sqlite_url, {"beacon-text"}) == {"beacon-text"}
