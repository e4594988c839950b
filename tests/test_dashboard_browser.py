"""GET /dashboard and GET /docs in Chromium: the dashboard shows exactly the API's numbers,
keeps its state in the URL, asks for a key when reads need one, and loads nothing from
another host."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.helpers import create_key, watched_page

pytestmark = [pytest.mark.live, pytest.mark.slow]

START, END = "2025-03-27", "2025-04-02"  # across Europe's change of clocks (2025-03-30)


def seed_events() -> list[dict]:
    """A week of plays, stops, pauses and purchases of three users, at hours spread over the
    day, with play/stop sessions of known lengths."""
    events = []
    first = datetime(2025, 3, 26, 20, 0, tzinfo=UTC)
    for hour in range(0, 8 * 24, 5):
        at = first + timedelta(hours=hour, minutes=hour % 60)
        user = f"u{hour % 3}"
        events.append({"event": "play", "user_id": user, "timestamp": at.isoformat()})
        if hour % 2:
            events.append(
                {
                    "event": "pause",
                    "user_id": user,
                    "timestamp": (at + timedelta(seconds=30)).isoformat(),
                }
            )
        events.append(
            {
                "event": "stop",
                "user_id": user,
                "timestamp": (at + timedelta(seconds=60 + hour)).isoformat(),
            }
        )
        if hour % 7 == 0:
            events.append(
                {
                    "event": "purchase",
                    "user_id": user,
                    "timestamp": (at + timedelta(minutes=2)).isoformat(),
                }
            )
    return events


@pytest.fixture
def seeded(client):
    response = client.post("/track/batch", json={"events": seed_events()})
    assert response.status_code == 200 and response.get_json()["rejected"] == []
    return client


def api(client, path, view, **extra):
    query = {
        "start_date": view["start"],
        "end_date": view["end"],
        "group_by": view["group_by"],
        "tz": view["tz"],
        "week_start": view.get("week_start", "monday"),
        "fill": "zero",
        **extra,
    }
    response = client.get(f"{path}?{urlencode(query, doseq=True)}")
    return response.status_code, response.get_json()


def expected_view(client, view) -> tuple[list[list[str]], dict[str, str]]:
    """What the dashboard must show for ``view``, from the API's own answers: the table's rows
    (header first) and the total cards."""
    by_user = {"user_id": view["user_id"]} if view.get("user_id") else {}
    events = view.get("event", [])
    _, metrics = api(client, "/metrics", view, **by_user)
    _, sessions = api(client, "/sessions", view, **by_user)
    users_status, users = (
        (None, None)
        if by_user
        else api(client, "/active-users", view, **({"event": events} if events else {}))
    )
    names = events or sorted({k for row in metrics["data"] for k in row if k != "date"})
    header = ["Period", *names, "Sessions", "Average session (s)"]
    with_users = users_status == 200
    if with_users:
        header.append("Active users")
        users_by_date = {row["date"]: row["users"] for row in users["data"]}
    sessions_by_date = {row["date"]: row for row in sessions["data"]}
    rows = [header]
    for row in metrics["data"]:
        session = sessions_by_date[row["date"]]
        cells = [
            row["date"],
            *(str(row.get(n, 0)) for n in names),
            str(session["sessionCount"]),
            str(session["averageDuration"]),
        ]
        if with_users:
            cells.append(str(users_by_date[row["date"]]))
        rows.append(cells)
    total_events = sum(row.get(n, 0) for row in metrics["data"] for n in names)
    count = sum(row["sessionCount"] for row in sessions["data"])
    duration = sum(row["totalDuration"] for row in sessions["data"])
    cards = {
        "total-events": f"{total_events:,}",
        "total-sessions": f"{count:,}",
        "average-session": f"{int(duration / count + 0.5):,} s" if count else "–",
        "peak-users": f"{max(users_by_date.values()):,}" if with_users else "–",
    }
    return rows, cards


def shown_view(page) -> tuple[list[list[str]], dict[str, str]]:
    rows = page.eval_on_selector_all(
        "#table tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    cards = {
        name: page.inner_text(f"#{name}")
        for name in ("total-events", "total-sessions", "average-session", "peak-users")
    }
    return rows, cards


def open_dashboard(watched, base_url: str, view: dict):
    query = {"range": "custom", **view}
    watched.page.goto(f"{base_url}/dashboard?{urlencode(query, doseq=True)}")
    wait_ready(watched.page)


def wait_ready(page, state: str = "ready"):
    page.wait_for_selector(f"body[data-state={state}]", timeout=20_000)


VIEWS = [
    {"start": START, "end": END, "group_by": "day", "tz": "UTC"},
    {
        "start": START,
        "end": END,
        "group_by": "hour",
        "tz": "Europe/Berlin",
        "event": ["play", "stop"],
    },
    {
        "start": START,
        "end": END,
        "group_by": "week",
        "tz": "Asia/Kathmandu",
        "week_start": "sunday",
        "user_id": "u1",
    },
    {
        "start": "2025-03-01",
        "end": END,
        "group_by": "month",
        "tz": "America/Los_Angeles",
        "event": ["purchase"],
    },
]


def test_the_dashboard_shows_the_api_numbers(browser, live_server, seeded):
    server = live_server()
    watched = watched_page(browser)
    for view in VIEWS:
        open_dashboard(watched, server.url, view)
        rows, cards = shown_view(watched.page)
        expected_rows, expected_cards = expected_view(seeded, view)
        assert len(expected_rows) > 2, view
        assert rows == expected_rows, view
        assert cards == expected_cards, view
    watched.assert_clean()


def test_controls_live_in_the_url_and_a_reload_restores_them(browser, live_server, seeded):
    server = live_server()
    watched = watched_page(browser, timezone_id="America/New_York")
    page = watched.page
    page.goto(f"{server.url}/dashboard")
    wait_ready(page)
    assert page.input_value("#tz") == "America/New_York"  # the browser's own zone by default
    assert page.input_value("#range") == "30d"

    page.select_option("#range", "custom")
    page.fill("#start", START)
    page.fill("#end", END)
    page.select_option("#group_by", "week")
    page.select_option("#week_start", "sunday")
    page.select_option("#event", ["pause", "purchase"])
    wait_ready(page)
    query = parse_qs(urlsplit(page.url).query)
    assert query["group_by"] == ["week"] and query["week_start"] == ["sunday"]
    assert query["start"] == [START] and query["end"] == [END]
    assert sorted(query["event"]) == ["pause", "purchase"]
    before = shown_view(page)
    view = {
        "start": START,
        "end": END,
        "group_by": "week",
        "tz": "America/New_York",
        "week_start": "sunday",
        "event": ["pause", "purchase"],
    }
    assert before == expected_view(seeded, view)

    page.reload()
    wait_ready(page)
    assert page.input_value("#group_by") == "week"
    assert page.eval_on_selector("#event", "s => [...s.selectedOptions].map(o => o.value)") == [
        "pause",
        "purchase",
    ]
    assert shown_view(page) == before
    watched.assert_clean()


def test_nothing_leaves_this_host(browser, live_server, seeded):
    server = live_server()
    for path in ("/dashboard", "/docs"):
        watched = watched_page(browser)
        watched.page.goto(server.url + path)
        if path == "/docs":
            watched.page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            assert "/metrics" in watched.page.inner_text("#reference")
        else:
            wait_ready(watched.page)
        watched.page.wait_for_load_state("networkidle")
        watched.assert_clean()
    # The page's Content-Security-Policy refuses another host, and says so on the console...
    watched.page.evaluate("fetch('https://cdn.example.com/x.js').catch(() => null)")
    assert any("Refused to connect" in error for error in watched.errors)
    # ... and the watch sees a request to another host from a page without that policy.
    unguarded = watched_page(browser)
    unguarded.page.set_content('<img src="https://cdn.example.com/x.png" alt="">')
    assert unguarded.blocked == ["https://cdn.example.com/x.png"]


def test_the_dashboard_asks_for_a_read_key(browser, live_server, seeded, app):
    server = live_server(AUTH_MODE="reads")
    secret = create_key(app, "dashboard", "read")
    ingest_only = create_key(app, "collector", "ingest")
    watched = watched_page(browser)
    page = watched.page
    page.goto(f"{server.url}/dashboard?{urlencode({'range': 'custom', **VIEWS[0]})}")
    wait_ready(page, "key")
    assert page.inner_text("#key-message") == "This server needs a read key to show its numbers."

    page.fill("#key", "ak_not_a_key_of_this_server")
    page.click("#key-form button")
    wait_ready(page, "key")
    assert "This key was refused: Invalid API key" in page.inner_text("#key-message")

    page.fill("#key", ingest_only)
    page.keyboard.press("Enter")
    wait_ready(page, "key")
    assert "This API key does not allow read" in page.inner_text("#key-message")

    page.fill("#key", secret)
    page.keyboard.press("Enter")
    wait_ready(page)
    assert page.is_hidden("#key-form")
    assert shown_view(page) == expected_view(seeded, VIEWS[0])
    assert page.evaluate("sessionStorage.getItem('analytics.read_key')") == secret
    watched.assert_clean()


def test_active_users_missing_from_the_server_is_said(browser, live_server, seeded):
    server = live_server()
    watched = watched_page(browser)
    watched.page.route(
        "**/active-users?*",
        lambda route: route.fulfill(
            status=404,
            content_type="application/json",
            body='{"status": "error", "message": "Not found"}',
        ),
    )
    open_dashboard(watched, server.url, VIEWS[0])
    assert (
        watched.page.inner_text("#users-note") == "Active users are not available on this server."
    )
    assert watched.page.is_hidden("#users-chart")
    assert "Active users" not in shown_view(watched.page)[0][0]
    watched.assert_clean()


def test_active_users_are_the_api_numbers(browser, live_server, seeded):
    server = live_server()
    watched = watched_page(browser)
    for view in (VIEWS[0], VIEWS[1]):
        open_dashboard(watched, server.url, view)
        rows, cards = shown_view(watched.page)
        assert rows[0][-1] == "Active users"
        assert (rows, cards) == expected_view(seeded, view)
    watched.assert_clean()


def test_the_csv_download_is_the_table(browser, live_server, seeded):
    server = live_server()
    watched = watched_page(browser, accept_downloads=True)
    open_dashboard(watched, server.url, VIEWS[1])
    with watched.page.expect_download() as download:
        watched.page.click("#csv")
    text = Path(download.value.path()).read_bytes().decode()
    assert text.endswith("\r\n")
    assert [line.split(",") for line in text.split("\r\n")[:-1]] == shown_view(watched.page)[0]
    watched.assert_clean()
