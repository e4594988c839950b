"""GET /metrics and GET /sessions with tz, group_by=hour, week_start, event and fill, on the
contract's own cases, on both backends."""

from __future__ import annotations

import pytest

from analytics.reports import MAX_FILLED_PERIODS
from tests.helpers import assert_error, get_data, track


def error(client, query: str, path: str = "/metrics") -> str:
    """The message of the 400 that GET ``path?query`` answers."""
    return assert_error(client.get(f"{path}?{query}"), 400)["message"]


def test_days_are_cut_at_local_midnight(client):
    track(client, "play", "2025-01-01T22:30:00Z")  # 2025-01-02 04:15 in Kathmandu
    track(client, "stop", "2025-01-01T23:00:00Z")
    track(client, "view", "2025-01-01T18:14:59Z")  # 23:59:59 local, still the 1st
    query = "start_date=2025-01-01&end_date=2025-01-02"
    assert get_data(client, query) == [{"date": "2025-01-01", "play": 1, "stop": 1, "view": 1}]
    assert get_data(client, query + "&tz=Asia/Kathmandu") == [
        {"date": "2025-01-01", "view": 1},
        {"date": "2025-01-02", "play": 1, "stop": 1},
    ]
    assert get_data(client, query + "&tz=Asia/Kathmandu", "/sessions") == [
        {"date": "2025-01-02", "totalDuration": 1800, "sessionCount": 1, "averageDuration": 1800}
    ]
    # The range is of local dates: the 1st alone in Kathmandu leaves the 2nd's events out.
    assert get_data(client, "start_date=2025-01-01&end_date=2025-01-01&tz=Asia/Kathmandu") == [
        {"date": "2025-01-01", "view": 1}
    ]


def test_hours_label_their_offset_and_the_repeated_hour_appears_twice(client):
    # Berlin leaves summer time on 2025-10-26 at 03:00 +02:00 = 01:00Z, back to 02:00 +01:00.
    track(client, "a", "2025-10-26T00:30:00Z")  # 02:30 +02:00
    track(client, "b", "2025-10-26T01:30:00Z")  # 02:30 +01:00
    track(client, "c", "2025-10-26T02:30:00Z")  # 03:30 +01:00
    assert get_data(
        client, "start_date=2025-10-26&end_date=2025-10-26&group_by=hour&tz=Europe/Berlin"
    ) == [
        {"date": "2025-10-26T02:00+02:00", "a": 1},
        {"date": "2025-10-26T02:00+01:00", "b": 1},
        {"date": "2025-10-26T03:00+01:00", "c": 1},
    ]
    assert get_data(client, "start_date=2025-10-26&end_date=2025-10-26&group_by=hour") == [
        {"date": "2025-10-26T00:00+00:00", "a": 1},
        {"date": "2025-10-26T01:00+00:00", "b": 1},
        {"date": "2025-10-26T02:00+00:00", "c": 1},
    ]


def test_a_day_lasts_23_5_hours_on_lord_howe(client):
    # Lord Howe Island goes from +10:30 to +11:00 at 02:00 local on 2025-10-05 (15:30Z the
    # day before): its hour 02 lasts half an hour, at the new offset.
    query = (
        "start_date=2025-10-05&end_date=2025-10-05&group_by=hour&fill=zero&tz=Australia/Lord_Howe"
    )
    labels = [row["date"] for row in get_data(client, query + "&event=x")]
    assert labels[:4] == [
        "2025-10-05T00:00+10:30",
        "2025-10-05T01:00+10:30",
        "2025-10-05T02:00+11:00",
        "2025-10-05T03:00+11:00",
    ]
    assert len(labels) == 24 and labels[-1] == "2025-10-05T23:00+11:00"


def test_hours_that_begin_on_different_quarters_of_a_utc_hour_are_counted_apart(client):
    # Before Lord Howe's change (15:30Z) its hours begin at half past a UTC hour, after it on
    # the hour: UTC hour 14 holds parts of local hours 00 and 01, and UTC hour 15 of 01 and 02.
    for at in ("14:05", "14:20", "14:40", "15:10", "15:35", "16:05"):
        track(client, "x", f"2025-10-04T{at}:00Z")
    query = "start_date=2025-10-05&end_date=2025-10-05&tz=Australia/Lord_Howe"
    assert get_data(client, query + "&group_by=hour") == [
        {"date": "2025-10-05T00:00+10:30", "x": 2},
        {"date": "2025-10-05T01:00+10:30", "x": 2},
        {"date": "2025-10-05T02:00+11:00", "x": 1},
        {"date": "2025-10-05T03:00+11:00", "x": 1},
    ]
    assert get_data(client, query) == [{"date": "2025-10-05", "x": 6}]
    # Kathmandu's hours begin at a quarter past: 14:05Z is 19:50 local, 14:20Z 20:05.
    assert get_data(
        client, "start_date=2025-10-04&end_date=2025-10-04&group_by=hour&tz=Asia/Kathmandu"
    ) == [
        {"date": "2025-10-04T19:00+05:45", "x": 1},
        {"date": "2025-10-04T20:00+05:45", "x": 3},
        {"date": "2025-10-04T21:00+05:45", "x": 2},
    ]


def test_week_start_and_its_label(client):
    track(client, "play", "2025-01-04T12:00:00Z")  # a Saturday
    track(client, "play", "2025-01-05T12:00:00Z")  # a Sunday
    query = "start_date=2025-01-01&end_date=2025-01-31&group_by=week"
    assert get_data(client, query) == [{"date": "2024-12-30", "play": 2}]
    assert get_data(client, query + "&week_start=SUNDAY") == [
        {"date": "2024-12-29", "play": 1},
        {"date": "2025-01-05", "play": 1},
    ]
    assert get_data(client, query + "&week_start=saturday") == [{"date": "2025-01-04", "play": 2}]


def test_event_filter_counts_only_the_names_asked_for(client):
    for name in ("play", "stop", "view", "view"):
        track(client, name, "2025-01-01T10:00:00Z")
    query = "start_date=2025-01-01&end_date=2025-01-01"
    assert get_data(client, query + "&event=view&event=play") == [
        {"date": "2025-01-01", "play": 1, "view": 2}
    ]
    assert get_data(client, query + "&event=nothing") == []
    assert get_data(client, query + "&event=view&user_id=u1") == [{"date": "2025-01-01", "view": 2}]


def test_fill_zero_lists_every_period_and_every_name(client):
    track(client, "play", "2025-01-01T10:00:00Z")
    track(client, "stop", "2025-01-03T10:00:00Z")
    query = "start_date=2025-01-01&end_date=2025-01-03&fill=zero"
    assert get_data(client, query) == [
        {"date": "2025-01-01", "play": 1, "stop": 0},
        {"date": "2025-01-02", "play": 0, "stop": 0},
        {"date": "2025-01-03", "play": 0, "stop": 1},
    ]
    assert get_data(client, query + "&event=play&event=skip") == [
        {"date": "2025-01-01", "play": 1, "skip": 0},
        {"date": "2025-01-02", "play": 0, "skip": 0},
        {"date": "2025-01-03", "play": 0, "skip": 0},
    ]
    assert get_data(client, query, "/sessions") == [
        {"date": day, "totalDuration": 0, "sessionCount": 0, "averageDuration": 0}
        if day != "2025-01-01"
        else {"date": day, "totalDuration": 172800, "sessionCount": 1, "averageDuration": 172800}
        for day in ("2025-01-01", "2025-01-02", "2025-01-03")
    ]
    # Weeks overlapping the range appear, labelled by their first day.
    assert [
        row["date"]
        for row in get_data(
            client, "start_date=2025-01-01&end_date=2025-01-14&group_by=week&fill=zero"
        )
    ] == ["2024-12-30", "2025-01-06", "2025-01-13"]
    # Without data at all, fill=zero still lists the periods.
    assert get_data(client, "start_date=2024-01-01&end_date=2024-01-02&fill=zero") == [
        {"date": "2024-01-01"},
        {"date": "2024-01-02"},
    ]


def test_a_range_of_centuries_costs_what_the_data_costs(client):
    track(client, "play", "2025-01-01T10:00:00Z")
    assert get_data(client, "start_date=0001-01-01&end_date=9999-12-31&group_by=hour") == [
        {"date": "2025-01-01T10:00+00:00", "play": 1}
    ]
    message = error(client, "start_date=0001-01-01&end_date=9999-12-31&fill=zero")
    assert str(MAX_FILLED_PERIODS) in message


@pytest.mark.parametrize(
    "query, message",
    [
        (
            "start_date=2025-01-01&end_date=2025-01-01&tz=europe/berlin",
            "tz must be an IANA time zone name, e.g. Europe/Berlin",
        ),
        (
            "start_date=2025-01-01&end_date=2025-01-01&tz=",
            "tz must be an IANA time zone name, e.g. Europe/Berlin",
        ),
        (
            "start_date=2025-01-01&end_date=2025-01-01&tz=../../etc/passwd",
            "tz must be an IANA time zone name, e.g. Europe/Berlin",
        ),
        (
            "start_date=2025-01-01&end_date=2025-01-01&week_start=mon",
            "week_start must be a day of the week, e.g. monday",
        ),
        ("start_date=2025-01-01&end_date=2025-01-01&event=a&event=", "event must not be empty"),
        (
            "start_date=2025-01-01&end_date=2025-01-01&"
            + "&".join(f"event=e{n}" for n in range(51)),
            "at most 50 event names",
        ),
        ("start_date=2025-01-01&end_date=2025-01-01&fill=Zero", "fill must be one of: none, zero"),
        # the order: group_by, then tz, week_start, event, fill
        (
            "start_date=2025-01-01&end_date=2025-01-01&group_by=year&tz=x",
            "group_by must be one of: hour, day, week, month",
        ),
        (
            "start_date=2025-01-01&end_date=2025-01-01&tz=x&week_start=x",
            "tz must be an IANA time zone name, e.g. Europe/Berlin",
        ),
        (
            "start_date=2025-01-01&end_date=2025-01-01&week_start=x&event=",
            "week_start must be a day of the week, e.g. monday",
        ),
        ("start_date=2025-01-01&end_date=2025-01-01&event=&fill=x", "event must not be empty"),
    ],
)
def test_query_option_messages(client, query, message):
    assert error(client, query) == message


def test_event_is_not_a_parameter_of_sessions_and_comes_last(client):
    query = "start_date=2025-01-01&end_date=2025-01-01&event=play"
    assert error(client, query, "/sessions") == "event is not a parameter of /sessions"
    assert error(client, query + "&fill=x", "/sessions") == "fill must be one of: none, zero"


def test_events_at_the_first_day_there_is_are_counted(client):
    track(client, "play", "0001-01-01T00:00:00Z")
    assert get_data(client, "start_date=0001-01-01&end_date=0001-01-02") == [
        {"date": "0001-01-01", "play": 1}
    ]


@pytest.mark.parametrize("tz", ["America/Los_Angeles", "Asia/Tokyo"])
def test_the_ends_of_time_in_any_zone(client, tz):
    track(client, "play", "0001-01-01T00:00:00Z")
    track(client, "play", "0001-01-02T12:00:00Z")
    for group_by in ("hour", "day", "week", "month"):
        rows = get_data(
            client, f"start_date=0001-01-01&end_date=9999-12-31&tz={tz}&group_by={group_by}"
        )
        # West of Greenwich the first instant is still the year 0 locally, which has no date.
        assert sum(row["play"] for row in rows) == (1 if tz == "America/Los_Angeles" else 2)


@pytest.mark.parametrize("path", ["/metrics", "/sessions", "/active-users"])
def test_the_last_day_there_is_in_a_zone_behind_utc(client, path):
    track(client, "play", "9999-12-31T23:00:00Z")  # a future timestamp: stored as now
    query = "start_date=9999-12-31&end_date=9999-12-31&tz=America/Los_Angeles&fill=zero"
    [period] = get_data(client, query, path)
    assert period["date"] == "9999-12-31"
