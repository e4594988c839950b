"""GET /analytics.js in Chromium: a page on another origin tracks events, and each is stored
exactly once whether the page closes at once or the server is away for a while."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import text

from tests.helpers import StaticSite, create_key, stop_process, wait_for

pytestmark = [pytest.mark.live, pytest.mark.slow]

SETTLE_SECONDS = 2.0  # how long a late duplicate is given to arrive before counting


def host_page(server_url: str, key: str | None = None) -> str:
    options = json.dumps({"key": key} if key else {})
    return f"""<!doctype html><title>shop</title>
<script src="{server_url}/analytics.js"></script>
<script>analytics.init({options});</script>"""


def stored(engine) -> list[tuple[str, str, str, dict]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event, user_id, event_id, metadata FROM events ORDER BY id")
        ).all()
    return [(e, u, i, m if isinstance(m, dict) else json.loads(m or "null")) for e, u, i, m in rows]


def stored_once(engine, expected: int) -> list:
    """The stored events once ``expected`` have arrived and nothing more came after."""
    wait_for(lambda: len(stored(engine)) >= expected, timeout=30)
    time.sleep(SETTLE_SECONDS)
    rows = stored(engine)
    assert len(rows) == expected
    assert len({event_id for _, _, event_id, _ in rows}) == expected
    return rows


@pytest.fixture
def site():
    sites = []

    def open_site(*args, **kwargs) -> StaticSite:
        sites.append(StaticSite(host_page(*args, **kwargs)))
        return sites[-1]

    yield open_site
    for each in sites:
        each.close()


def test_fifty_events_of_a_page_closed_at_once_are_stored_once(
    browser, live_server, app, engine, site
):
    server = live_server(AUTH_MODE="all")
    shop = site(server.url)
    # An ingest key bound to the page's origin: sent in the query string, checked against
    # the Origin the browser sends.
    secret = create_key(app, "shop", "ingest", origins=(shop.url.rstrip("/"),))
    shop.html = host_page(server.url, key=secret)
    context = browser.new_context()
    page = context.new_page()
    page.goto(shop.url)
    page.evaluate("for (let i = 0; i < 50; i++) analytics.track('click', {n: i})")
    page.close(run_before_unload=True)

    rows = stored_once(engine, 50)
    assert sorted(metadata["n"] for _, _, _, metadata in rows) == list(range(50))
    assert {user for _, user, _, _ in rows} == {rows[0][1]}
    assert rows[0][1].startswith("anon-")
    context.close()


def test_events_wait_for_a_server_that_is_away(browser, live_server, engine, site):
    server = live_server()
    page = browser.new_page()
    page.goto(site(server.url).url)
    stop_process(server.process)
    page.evaluate("for (let i = 0; i < 20; i++) analytics.track('offline', {n: i})")
    time.sleep(4)  # the tracker fails and backs off meanwhile
    assert stored(engine) == []
    server.start()

    rows = stored_once(engine, 20)
    assert sorted(metadata["n"] for _, _, _, metadata in rows) == list(range(20))
    page.close()


def test_identify_switches_the_user_id(browser, live_server, engine, site):
    server = live_server()
    context = browser.new_context()
    page = context.new_page()
    page.goto(site(server.url).url)
    anonymous = page.evaluate("analytics.user()")
    assert anonymous.startswith("anon-")
    assert page.evaluate("localStorage.getItem('analytics.user_id')") == anonymous
    page.reload()
    assert page.evaluate("analytics.user()") == anonymous  # kept across visits

    page.evaluate("""analytics.track('browse');
                     analytics.identify('alice');
                     analytics.track('purchase', {total: 12});
                     analytics.flush()""")
    rows = stored_once(engine, 2)
    assert {(event, user) for event, user, _, _ in rows} == {
        ("browse", anonymous),
        ("purchase", "alice"),
    }
    assert page.evaluate("localStorage.getItem('analytics.user_id')") == "alice"
    context.close()
