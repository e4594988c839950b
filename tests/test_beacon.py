"""In Chromium (Debian's, driven by Playwright): a page on another origin sends events the ways
browsers do, and each is stored. A JSON Blob sent with navigator.sendBeacon goes in credentials
mode, as does a fetch with credentials: "include"; neither is accepted with
Access-Control-Allow-Origin: *, so the ingest endpoints echo the Origin."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, select

from analytics.models import Event
from tests.helpers import LiveServer, StaticSite, empty_tables, wait_for

pytestmark = [pytest.mark.live, pytest.mark.slow]

PAGE = "<!doctype html><title>analytics beacon test</title>"


@pytest.fixture(scope="module")
def api(sqlite_url):
    server = LiveServer(sqlite_url, workers=1).start()
    yield server
    server.stop()
    empty_tables(sqlite_url)


@pytest.fixture(scope="module")
def page(browser):
    """A page served from http://localhost:<port>: another origin than the API's 127.0.0.1."""
    site = StaticSite(PAGE)
    page = browser.new_page()
    page.goto(site.url)
    yield page
    page.close()
    site.close()


def stored_users(sqlite_url, wanted: set[str], timeout: float = 15) -> set[str]:
    """The user_ids of ``wanted`` once they are all stored, waiting for a beacon's late
    delivery."""
    engine = create_engine(sqlite_url)

    def found() -> set[str]:
        with engine.connect() as conn:
            users = set(conn.scalars(select(Event.user_id).where(Event.user_id.in_(wanted))))
        return users if users == wanted else set()

    try:
        return wait_for(found, timeout=timeout)
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
