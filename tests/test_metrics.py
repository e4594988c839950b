"""GET /metrics: every rule of the contract, on both backends; the query-string validation
shared with GET /sessions; and labels that do not depend on the database session's time zone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from openapi_spec_validator import validate
from sqlalchemy import text
from sqlalchemy.orm import Session

from analytics import reports
from analytics.periods import Periods, bucket_of
from analytics.rows import EventRow
from analytics.writer import store_events
from tests.helpers import assert_error, get_data, track

REQUIRED = "start_date and end_date are required"
INVALID_DATE = "Invalid date format. Use YYYY-MM-DD"
ORDER = "start_date must not be after end_date"
GROUP_BY = "group_by must be one of: hour, day, week, month"
PERIOD_PATHS = ("/metrics", "/sessions")


# --- counting ---------------------------------------------------------------------------------


def test_counts_per_day_and_event_name(client):
    for event, at in [
        ("play", "2025-01-01T08:00:00Z"),
        ("play", "2025-01-01T09:00:00Z"),
        ("stop", "2025-01-01T09:30:00Z"),
        ("pause", "2025-01-02T10:00:00Z"),
        ("play", "2025-01-02T11:00:00Z"),
    ]:
        track(client, event, at)
    response = client.get("/metrics?start_date=2025-01-01&end_date=2025-01-31&group_by=day")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "success",
        "data": [
            {"date": "2025-01-01", "play": 2, "stop": 1},
            {"date": "2025-01-02", "pause": 1, "play": 1},
        ],
    }


def test_counts_are_json_integers(client):
    track(client, "play", "2025-01-01T08:00:00Z")
    raw = client.get("/metrics?start_date=2025-01-01&end_date=2025-01-01").get_data(as_text=True)
    [row] = json.loads(raw)["data"]
    assert type(row["play"]) is int and row["play"] == 1  # 1, not 1.0 nor "1"


def test_day_is_the_default_period(client):
    track(client, "play", "2025-01-01T08:00:00Z")
    track(client, "play", "2025-01-03T08:00:00Z")
    assert get_data(client, "start_date=2025-01-01&end_date=2025-01-31") == [
        {"date": "2025-01-01", "play": 1},
        {"date": "2025-01-03", "play": 1},
    ]


def test_no_events_is_an_empty_list(client):
    assert get_data(client, "start_date=2025-01-01&end_date=2025-01-31") == []


def test_periods_without_events_and_names_without_events_are_left_out(client):
    track(client, "play", "2025-01-01T08:00:00Z")
    track(client, "purchase", "2025-01-05T08:00:00Z")
    data = get_data(client, "start_date=2025-01-01&end_date=2025-01-07")
    assert data == [{"date": "2025-01-01", "play": 1}, {"date": "2025-01-05", "purchase": 1}]


def test_periods_are_in_ascending_order_whatever_the_arrival_order(client):
    for day in ("2025-03-01", "2025-01-15", "2025-02-10", "2025-01-02"):
        track(client, "play", f"{day}T12:00:00Z")
    data = get_data(client, "start_date=2025-01-01&end_date=2025-03-31&group_by=month")
    assert [row["date"] for row in data] == ["2025-01-01", "2025-02-01", "2025-03-01"]
    assert [row["play"] for row in data] == [2, 1, 1]


def test_range_is_inclusive_of_both_dates_to_the_microsecond(client):
    track(client, "before", "2025-01-09T23:59:59.999999Z")
    track(client, "first", "2025-01-10T00:00:00Z")
    track(client, "last", "2025-01-12T23:59:59.999999Z")
    track(client, "after", "2025-01-13T00:00:00Z")
    data = get_data(client, "start_date=2025-01-10&end_date=2025-01-12")
    assert data == [{"date": "2025-01-10", "first": 1}, {"date": "2025-01-12", "last": 1}]


def test_single_day_range(client):
    track(client, "play", "2025-01-10T00:00:00Z")
    track(client, "play", "2025-01-10T23:59:59.999Z")
    track(client, "play", "2025-01-11T00:00:00Z")
    assert get_data(client, "start_date=2025-01-10&end_date=2025-01-10") == [
        {"date": "2025-01-10", "play": 2}
    ]


def test_timestamps_with_offsets_count_on_their_utc_day(client):
    track(client, "play", "2025-01-10T23:30:00-02:00")  # 2025-01-11T01:30Z
    track(client, "play", "2025-01-11T00:30:00+02:00")  # 2025-01-10T22:30Z
    assert get_data(client, "start_date=2025-01-10&end_date=2025-01-11") == [
        {"date": "2025-01-10", "play": 1},
        {"date": "2025-01-11", "play": 1},
    ]


def test_weeks_are_iso_weeks_labelled_with_their_monday_across_year_ends(client):
    for at in [
        "2024-12-29T23:59:59.999999Z",  # Sunday: the week of Monday 2024-12-23
        "2024-12-30T00:00:00Z",  # Monday
        "2025-01-01T12:00:00Z",  # Wednesday, same ISO week as 2024-12-30
        "2025-01-05T23:59:59.999999Z",  # Sunday, still that week
        "2025-01-06T00:00:00Z",  # Monday: a new week
        "2026-01-01T00:00:00Z",  # Thursday of the week of Monday 2025-12-29
        "2026-01-04T23:59:59.999999Z",
    ]:  # its Sunday
        track(client, "play", at)
    data = get_data(client, "start_date=2024-12-01&end_date=2026-01-31&group_by=week")
    assert data == [
        {"date": "2024-12-23", "play": 1},
        {"date": "2024-12-30", "play": 3},
        {"date": "2025-01-06", "play": 1},
        {"date": "2025-12-29", "play": 2},
    ]


def test_week_label_may_precede_start_date_but_only_events_in_range_count(client):
    track(client, "play", "2024-12-30T10:00:00Z")  # Monday, before the range
    track(client, "play", "2025-01-01T10:00:00Z")  # Wednesday, in the range
    track(client, "play", "2025-01-02T10:00:00Z")
    assert get_data(client, "start_date=2025-01-01&end_date=2025-01-01&group_by=week") == [
        {"date": "2024-12-30", "play": 1}
    ]


def test_months_are_labelled_with_their_first_day(client):
    for at in [
        "2024-12-31T23:59:59.999999Z",
        "2025-01-01T00:00:00Z",
        "2025-01-31T23:59:59Z",
        "2025-02-28T12:00:00Z",
        "2024-02-29T12:00:00Z",
    ]:
        track(client, "play", at)
    data = get_data(client, "start_date=2024-01-01&end_date=2025-12-31&group_by=month")
    assert data == [
        {"date": "2024-02-01", "play": 1},
        {"date": "2024-12-01", "play": 1},
        {"date": "2025-01-01", "play": 2},
        {"date": "2025-02-01", "play": 1},
    ]


def test_month_label_may_precede_start_date(client):
    track(client, "play", "2025-01-10T10:00:00Z")
    track(client, "play", "2025-01-20T10:00:00Z")
    assert get_data(client, "start_date=2025-01-15&end_date=2025-01-31&group_by=month") == [
        {"date": "2025-01-01", "play": 1}
    ]


def test_user_id_filters_by_exact_match(client):
    track(client, "play", "2025-01-01T10:00:00Z", user_id="user1")
    track(client, "play", "2025-01-01T11:00:00Z", user_id="User1")
    track(client, "play", "2025-01-01T12:00:00Z", user_id="user10")
    track(client, "stop", "2025-01-01T13:00:00Z", user_id="user1")
    query = "start_date=2025-01-01&end_date=2025-01-01"
    assert get_data(client, query + "&user_id=user1") == [
        {"date": "2025-01-01", "play": 1, "stop": 1}
    ]
    assert get_data(client, query + "&user_id=user") == []
    assert get_data(client, query) == [{"date": "2025-01-01", "play": 3, "stop": 1}]


def test_empty_user_id_means_every_user(client):
    track(client, "play", "2025-01-01T10:00:00Z", user_id="a")
    track(client, "play", "2025-01-01T11:00:00Z", user_id="b")
    assert get_data(client, "start_date=2025-01-01&end_date=2025-01-01&user_id=") == [
        {"date": "2025-01-01", "play": 2}
    ]


def test_user_id_with_url_encoded_characters(client):
    track(client, "play", "2025-01-01T10:00:00Z", user_id="a b&c=d/é")
    query = "start_date=2025-01-01&end_date=2025-01-01&user_id=a%20b%26c%3Dd%2F%C3%A9"
    assert get_data(client, query) == [{"date": "2025-01-01", "play": 1}]


def test_event_names_are_arbitrary_strings(client):
    names = [
        "status",
        "__proto__",
        "constructor",
        "toString",
        "data",
        "hasOwnProperty",
        "Play",
        "play ",
        "名前",
        "a.b",
        "a\"b",
        "a\\b",
        "line\nbreak\ttab\u0001",
        "🎵 \u2028",
        "x" * 255,
    ]
    for name in names:
        track(client, name, "2025-01-01T10:00:00Z")
    [row] = get_data(client, "start_date=2025-01-01&end_date=2025-01-01")
    assert row == {"date": "2025-01-01", **{name: 1 for name in names}}


def test_names_follow_the_date_in_code_point_order(client):
    # Orders that a collation or UTF-16 would give otherwise: case, accents, the astral plane.
    names = ["b", "B", "a", "_", "é", "z", "\uff21", "🎵", "Z", "a b", "ab"]
    for name in names:
        track(client, name, "2025-01-01T10:00:00Z")
    for options in ("", "&fill=zero", "&group_by=hour&tz=Asia/Kathmandu"):
        [row] = get_data(client, "start_date=2025-01-01&end_date=2025-01-01" + options)
        assert list(row) == ["date", *sorted(names)], options


@pytest.mark.parametrize("backend", ["postgresql"])
def test_names_are_in_code_point_order_whatever_the_columns_collation(client, engine):
    names = ["b", "B", "a", "é", "e", "z"]  # en-US sorts a, B, b, e, é, z
    columns = [("events", "event"), ("event_hours", "event")]

    def collate(collation: str) -> None:
        with engine.begin() as conn:
            for table, column in columns:
                conn.execute(
                    text(
                        f"ALTER TABLE {table} ALTER COLUMN {column} "
                        f'TYPE varchar(255) COLLATE "{collation}"'
                    )
                )

    collate("en-US-x-icu")
    try:
        for name in names:
            track(client, name, "2025-01-01T10:00:00Z")
        for options in ("", "&user_id=u1", "&group_by=hour&tz=Asia/Kathmandu"):
            [row] = get_data(client, "start_date=2025-01-01&end_date=2025-01-01" + options)
            assert list(row) == ["date", *sorted(names)], options
    finally:
        collate("default")


def test_a_period_of_several_runs_is_answered_once_with_their_sum(client, monkeypatch):
    # As when clocks go back across midnight: the date's first minutes, the day before's last
    # ones again, then the rest of the date.
    first = bucket_of(datetime(2025, 1, 2, tzinfo=UTC))
    periods = Periods(
        labels=("2025-01-02", "2025-01-01"),
        bounds=(first, first + 2, first + 4, first + 96),
        run_labels=("2025-01-02", "2025-01-01", "2025-01-02"),
    )
    monkeypatch.setattr(reports, "query_periods", lambda session, query: periods)
    track(client, "play", "2025-01-02T00:10:00Z")
    track(client, "stop", "2025-01-02T00:40:00Z")
    track(client, "play", "2025-01-02T05:00:00Z")
    assert get_data(client, "start_date=2025-01-01&end_date=2025-01-02") == [
        {"date": "2025-01-02", "play": 2},
        {"date": "2025-01-01", "stop": 1},
    ]


def test_many_event_names_are_all_counted(client, engine):
    names = [f"event_{n:04d}" for n in range(1500)]
    at = datetime(2025, 1, 1, 12, tzinfo=UTC)
    rows = [
        EventRow(name, "u1", at + timedelta(seconds=i % 7), at, "null")
        for i, name in enumerate(names * 2, start=1)
    ]
    with Session(engine) as session:
        assert all(store_events(session, rows))
    [row] = get_data(client, "start_date=2025-01-01&end_date=2025-01-01")
    assert row == {"date": "2025-01-01", **{name: 2 for name in names}}


# --- validation, the same on both endpoints -------------------------------------------------


@pytest.mark.parametrize("path", PERIOD_PATHS)
@pytest.mark.parametrize(
    "query",
    [
        "",
        "end_date=2025-01-31",
        "start_date=2025-01-01",
        "start_date=&end_date=2025-01-31",
        "start_date=2025-01-01&end_date=",
        "start_date=&end_date=",
        "group_by=day",
    ],
)
def test_missing_or_empty_dates(client, path, query):
    assert_error(client.get(f"{path}?{query}"), 400, REQUIRED)


@pytest.mark.parametrize("path", PERIOD_PATHS)
@pytest.mark.parametrize(
    "bad",
    [
        "2024-13-45",
        "2025-02-30",
        "2023-02-29",
        "2025-00-10",
        "2025-1-5",
        "25-01-05",
        "20250105",
        "2025/01/05",
        "05-01-2025",
        "2025-01-05T00:00:00",
        "2025-01-05Z",
        "%202025-01-05",
        "2025-01-05%20",
        "2025-01-05%0A",
        "%EF%BC%92025-01-05",
        "tomorrow",
        "0000-01-01",
    ],
)
@pytest.mark.parametrize("which", ["start_date", "end_date"])
def test_malformed_or_impossible_dates(client, path, bad, which):
    params = {"start_date": "2025-01-01", "end_date": "2025-01-31", which: bad}
    query = "&".join(f"{key}={value}" for key, value in params.items())
    body = assert_error(client.get(f"{path}?{query}"), 400, INVALID_DATE)
    assert list(body["errors"]) == [which]


@pytest.mark.parametrize("path", PERIOD_PATHS)
def test_start_after_end(client, path):
    assert_error(client.get(f"{path}?start_date=2025-02-01&end_date=2025-01-31"), 400, ORDER)


@pytest.mark.parametrize("path", PERIOD_PATHS)
def test_start_equal_to_end_is_allowed(client, path):
    assert get_data(client, "start_date=2025-02-01&end_date=2025-02-01", path) == []


@pytest.mark.parametrize("path", PERIOD_PATHS)
@pytest.mark.parametrize("group_by", ["year", "Day", "WEEK", "days", "", "day ", "HOUR"])
def test_unknown_group_by(client, path, group_by):
    response = client.get(f"{path}?start_date=2025-01-01&end_date=2025-01-31&group_by={group_by}")
    assert_error(response, 400, GROUP_BY)


@pytest.mark.parametrize("path", PERIOD_PATHS)
@pytest.mark.parametrize(
    "query, message",
    [
        # missing beats everything
        ("start_date=2025-13-01&group_by=year", REQUIRED),
        ("end_date=&start_date=2025-02-01&group_by=year", REQUIRED),
        # then format
        ("start_date=2025-02-01&end_date=2025-13-01&group_by=year", INVALID_DATE),
        ("start_date=bad&end_date=2025-01-01", INVALID_DATE),
        # then order
        ("start_date=2025-02-01&end_date=2025-01-01&group_by=year", ORDER),
        # group_by last
        ("start_date=2025-01-01&end_date=2025-02-01&group_by=year", GROUP_BY),
    ],
)
def test_error_precedence(client, path, query, message):
    response = client.get(f"{path}?{query}")
    assert_error(response, 400, message)
    assert response.headers["Access-Control-Allow-Origin"] == "*"  # errors are readable too


@pytest.mark.parametrize("path", PERIOD_PATHS)
def test_unknown_parameters_are_ignored(client, path):
    assert get_data(client, "start_date=2025-01-01&end_date=2025-01-02&limit=5&x=", path) == []


def test_a_repeated_parameter_counts_with_its_first_value(client):
    track(client, "play", "2025-01-01T10:00:00Z")
    query = "start_date=2025-01-01&start_date=bad&end_date=2025-01-02&group_by=week&group_by=x"
    assert get_data(client, query) == [{"date": "2024-12-30", "play": 1}]


@pytest.mark.parametrize("path", PERIOD_PATHS)
@pytest.mark.parametrize(
    "query",
    [
        "start_date=2025-01-01%00&end_date=2025-01-02",
        "start_date=2025-01-01&end_date=2025-01-02&user_id=u%00",
    ],
)
def test_nul_in_the_query_string_is_refused(client, path, query):
    assert "NUL" in assert_error(client.get(f"{path}?{query}"), 400)["message"]


@pytest.mark.parametrize("path", PERIOD_PATHS)
def test_post_is_405_with_allow(client, path):
    response = client.post(path)
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("path", PERIOD_PATHS)
def test_extreme_dates_are_valid(client, path):
    assert get_data(client, "start_date=0001-01-01&end_date=9999-12-31&group_by=week", path) == []


def test_extreme_dates_count_everything(client):
    track(client, "play", "2025-01-01T10:00:00Z")
    assert get_data(client, "start_date=0001-01-01&end_date=9999-12-31&group_by=month") == [
        {"date": "2025-01-01", "play": 1}
    ]


# --- failures and documentation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path, message",
    [("/metrics", "Failed to fetch metrics"), ("/sessions", "Failed to fetch session metrics")],
)
def test_database_failure_names_the_endpoint(app_factory, tmp_path, path, message):
    # An SQLite file without the events table: every query fails.
    app = app_factory(f"sqlite:///{tmp_path / 'empty.db'}")
    response = app.test_client().get(f"{path}?start_date=2025-01-01&end_date=2025-01-31")
    assert response.status_code in (500, 503)
    body = assert_error(response, response.status_code, message)
    assert "events" not in body["message"] and "SELECT" not in response.get_data(as_text=True)


def test_openapi_documents_both_endpoints(client):
    document = client.get("/openapi.json").get_json()
    validate(document)
    for path in PERIOD_PATHS:
        operation = document["paths"][path]["get"]
        parameters = {p["name"]: p for p in operation["parameters"]}
        expected = {"start_date", "end_date", "group_by", "user_id", "tz", "week_start", "fill"}
        assert set(parameters) == expected | ({"event"} if path == "/metrics" else set())
        assert parameters["start_date"]["required"] and parameters["end_date"]["required"]
        assert parameters["group_by"]["schema"]["enum"] == ["hour", "day", "week", "month"]
        assert parameters["fill"]["schema"]["enum"] == ["none", "zero"]
        assert {"200", "400", "500", "503"} <= set(operation["responses"])
        answer = operation["responses"]["200"]["content"]["application/json"]
        examples = answer.get("examples", {}).values() or [{"value": answer.get("example")}]
        assert all(example["value"]["data"] for example in examples)


# --- the database session's time zone does not matter -----------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"])
def test_labels_ignore_the_postgresql_session_time_zone(make_app, monkeypatch):
    # libpq reads PGTZ: every connection of this app starts in UTC+14.
    monkeypatch.setenv("PGTZ", "Pacific/Kiritimati")
    app = make_app()
    with app.extensions["analytics.db"]["engine"].connect() as conn:
        assert conn.execute(text("SHOW TimeZone")).scalar() == "Pacific/Kiritimati"
    client = app.test_client()
    # 10:00 UTC on a Sunday is already Monday in UTC+14; 23:59 UTC on Jan 31 is February.
    track(client, "play", "2025-01-05T10:00:00Z")
    track(client, "stop", "2025-01-05T10:00:30Z")
    track(client, "play", "2025-01-31T23:59:00Z")
    query = "start_date=2025-01-01&end_date=2025-01-31"
    assert get_data(client, query) == [
        {"date": "2025-01-05", "play": 1, "stop": 1},
        {"date": "2025-01-31", "play": 1},
    ]
    assert get_data(client, query + "&group_by=week") == [
        {"date": "2024-12-30", "play": 1, "stop": 1},
        {"date": "2025-01-27", "play": 1},
    ]
    assert get_data(client, query + "&group_by=month") == [
        {"date": "2025-01-01", "play": 2, "stop": 1}
    ]
    assert get_data(client, query + "&group_by=week", "/sessions") == [
        {"date": "2024-12-30", "totalDuration": 30, "sessionCount": 1, "averageDuration": 30}
    ]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgresql_connections_run_without_jit(app):
    # JIT compilation makes the short aggregate queries slower, not faster.
    with app.extensions["analytics.db"]["engine"].connect() as conn:
        assert conn.execute(text("SHOW jit")).scalar() == "off"
        timeout = conn.execute(
            text("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
        ).scalar()
        assert timeout == str(app.config["DB_STATEMENT_TIMEOUT_MS"])  # still applied
