"""GET /sessions: the pairing rules, periods, range and rounding of the contract, on both
backends. (Its query-string validation is shared with /metrics and tested in test_metrics.)"""

from __future__ import annotations

import json

import pytest

from tests.helpers import get_data, track

JANUARY = "start_date=2025-01-01&end_date=2025-01-31"


def sessions(client, query: str = JANUARY) -> list[dict]:
    return get_data(client, query, path="/sessions")


def track_all(client, *events: tuple[str, str], user_id: str = "u1") -> None:
    """Post events in the order given (their arrival order)."""
    for event, at in events:
        track(client, event, at, user_id=user_id)


def _session(client, user: str, play: str, stop: str) -> None:
    """One play and its stop, for ``user``."""
    track(client, "play", play, user_id=user)
    track(client, "stop", stop, user_id=user)


def day(date: str, total: int, count: int, average: int) -> dict:
    return {"date": date, "totalDuration": total, "sessionCount": count, "averageDuration": average}


def stored_names(client) -> dict[str, int]:
    """The events of January by name, as /metrics counts them."""
    counts: dict[str, int] = {}
    for row in get_data(client, JANUARY):
        for name, n in row.items():
            if name != "date":
                counts[name] = counts.get(name, 0) + n
    return counts


# --- the contract's pairing cases ------------------------------------------------------------


def test_play_then_stop_is_one_session(client):
    track_all(client, ("play", "2025-01-10T10:00:00Z"), ("stop", "2025-01-10T10:03:00Z"))
    response = client.get(f"/sessions?{JANUARY}")
    assert response.status_code == 200
    assert response.get_json() == {"status": "success", "data": [day("2025-01-10", 180, 1, 180)]}


def test_two_play_stop_pairs_are_two_sessions(client):
    track_all(
        client,
        ("play", "2025-01-10T10:00:00Z"),
        ("stop", "2025-01-10T10:01:00Z"),
        ("play", "2025-01-10T11:00:00Z"),
        ("stop", "2025-01-10T11:03:00Z"),
    )
    assert sessions(client) == [day("2025-01-10", 240, 2, 120)]


def test_play_play_stop_pairs_the_second_play(client):
    track_all(
        client,
        ("play", "2025-01-10T10:00:00Z"),
        ("play", "2025-01-10T10:05:00Z"),
        ("stop", "2025-01-10T10:06:00Z"),
    )
    assert sessions(client) == [day("2025-01-10", 60, 1, 60)]


def test_play_stop_stop_is_one_session(client):
    track_all(
        client,
        ("play", "2025-01-10T10:00:00Z"),
        ("stop", "2025-01-10T10:01:00Z"),
        ("stop", "2025-01-10T10:30:00Z"),
    )
    assert sessions(client) == [day("2025-01-10", 60, 1, 60)]


def test_stop_without_play_makes_no_session(client):
    track_all(client, ("stop", "2025-01-10T10:00:00Z"), ("stop", "2025-01-11T10:00:00Z"))
    assert sessions(client) == []
    assert stored_names(client) == {"stop": 2}  # the stops are there, and pair with nothing


def test_play_never_stopped_makes_no_session(client):
    track_all(client, ("play", "2025-01-10T10:00:00Z"), ("pause", "2025-01-10T10:05:00Z"))
    assert sessions(client) == []
    assert stored_names(client) == {"play": 1, "pause": 1}


def test_incomplete_play_does_not_disturb_later_sessions(client):
    track_all(
        client,
        ("play", "2025-01-09T10:00:00Z"),
        ("play", "2025-01-10T10:00:00Z"),
        ("stop", "2025-01-10T10:00:10Z"),
        ("play", "2025-01-11T10:00:00Z"),
    )
    assert sessions(client) == [day("2025-01-10", 10, 1, 10)]


def test_other_events_do_not_interrupt_a_session(client):
    track_all(
        client,
        ("play", "2025-01-10T10:00:00Z"),
        ("pause", "2025-01-10T10:01:00Z"),
        ("skip", "2025-01-10T10:02:00Z"),
        ("complete", "2025-01-10T10:03:00Z"),
        ("stop", "2025-01-10T10:04:00Z"),
    )
    assert sessions(client) == [day("2025-01-10", 240, 1, 240)]


def test_event_names_are_exact_and_case_sensitive(client):
    track_all(
        client,
        ("Play", "2025-01-10T10:00:00Z"),
        ("STOP", "2025-01-10T10:01:00Z"),
        ("play ", "2025-01-10T10:02:00Z"),
        ("stop", "2025-01-10T10:03:00Z"),
    )
    assert sessions(client) == []
    assert stored_names(client) == {"Play": 1, "STOP": 1, "play ": 1, "stop": 1}


def test_users_do_not_pair_with_each_other(client):
    track(client, "play", "2025-01-10T10:00:00Z", user_id="alice")
    track(client, "stop", "2025-01-10T10:01:00Z", user_id="bob")
    track(client, "stop", "2025-01-10T10:05:00Z", user_id="alice")
    assert sessions(client) == [day("2025-01-10", 300, 1, 300)]


def test_user_filter(client):
    track_all(
        client, ("play", "2025-01-10T10:00:00Z"), ("stop", "2025-01-10T10:00:10Z"), user_id="alice"
    )
    track_all(
        client, ("play", "2025-01-10T11:00:00Z"), ("stop", "2025-01-10T11:00:20Z"), user_id="bob"
    )
    assert sessions(client, JANUARY + "&user_id=alice") == [day("2025-01-10", 10, 1, 10)]
    assert sessions(client, JANUARY + "&user_id=bob") == [day("2025-01-10", 20, 1, 20)]
    assert sessions(client, JANUARY + "&user_id=carol") == []
    assert sessions(client) == [day("2025-01-10", 30, 2, 15)]


# --- order: timestamps first, then arrival --------------------------------------------------


def test_pairing_follows_timestamps_not_arrival(client):
    # Sent stop first, then the play it closes, then an earlier play.
    track_all(
        client,
        ("stop", "2025-01-10T10:10:00Z"),
        ("play", "2025-01-10T10:05:00Z"),
        ("play", "2025-01-10T10:00:00Z"),
    )
    assert sessions(client) == [day("2025-01-10", 300, 1, 300)]


def test_zero_second_session_counts(client):
    track_all(client, ("play", "2025-01-10T10:00:00Z"), ("stop", "2025-01-10T10:00:00Z"))
    assert sessions(client) == [day("2025-01-10", 0, 1, 0)]


def test_equal_timestamps_are_ordered_by_arrival(client):
    # The stop arrived before the play of the same instant, so it comes first: it pairs with
    # nothing, and the play stays open until the next stop.
    track_all(
        client,
        ("stop", "2025-01-10T10:00:00Z"),
        ("play", "2025-01-10T10:00:00Z"),
        ("stop", "2025-01-10T10:00:42Z"),
    )
    assert sessions(client) == [day("2025-01-10", 42, 1, 42)]


def test_equal_timestamps_in_the_other_arrival_order(client):
    # Play first: a 0-second session, and the later stop follows a stop, so it makes none.
    track_all(
        client,
        ("play", "2025-01-10T10:00:00Z"),
        ("stop", "2025-01-10T10:00:00Z"),
        ("stop", "2025-01-10T10:00:42Z"),
    )
    assert sessions(client) == [day("2025-01-10", 0, 1, 0)]


# --- periods and range ------------------------------------------------------------------------


def test_session_belongs_to_the_period_of_its_play(client):
    track_all(client, ("play", "2025-01-10T23:59:00Z"), ("stop", "2025-01-11T00:01:00Z"))
    assert sessions(client) == [day("2025-01-10", 120, 1, 120)]


def test_play_on_end_date_with_stop_after_the_range(client):
    track_all(client, ("play", "2025-01-31T23:59:59.999999Z"), ("stop", "2025-02-01T00:10:00Z"))
    assert sessions(client) == [day("2025-01-31", 600, 1, 600)]


def test_stop_after_the_range_needs_the_play_to_be_the_last_event_before_it(client):
    # After the range, another play comes before the stop: the play in the range stays open.
    track_all(
        client,
        ("play", "2025-01-31T22:00:00Z"),
        ("play", "2025-02-01T01:00:00Z"),
        ("stop", "2025-02-01T02:00:00Z"),
    )
    assert sessions(client) == []
    assert sessions(client, "start_date=2025-02-01&end_date=2025-02-01") == [
        day("2025-02-01", 3600, 1, 3600)
    ]


def test_play_before_the_range_is_not_counted(client):
    track_all(client, ("play", "2024-12-31T23:59:59.999999Z"), ("stop", "2025-01-01T00:00:05Z"))
    assert sessions(client) == []
    assert sessions(client, "start_date=2024-12-31&end_date=2024-12-31") == [
        day("2024-12-31", 5, 1, 5)
    ]


def test_events_before_the_range_take_part_in_pairing(client):
    # The stop on Jan 1 follows a play of Dec 31, so it does not close anything in the range;
    # the stop on Jan 2 follows that stop, so it makes no session either.
    track_all(
        client,
        ("play", "2024-12-31T23:00:00Z"),
        ("stop", "2025-01-01T01:00:00Z"),
        ("stop", "2025-01-02T01:00:00Z"),
    )
    assert sessions(client) == []
    # A play before the range followed by one in the range: the one in the range is paired.
    track_all(
        client, ("play", "2025-01-05T00:00:00Z"), ("stop", "2025-01-05T00:00:07Z"), user_id="u2"
    )
    track_all(client, ("play", "2024-12-20T00:00:00Z"), user_id="u2")
    assert sessions(client) == [day("2025-01-05", 7, 1, 7)]


def test_range_is_inclusive_of_both_dates_to_the_microsecond(client):
    # One user per play, each stopped on Jan 20: only the plays inside the range count.
    for play in (
        "2025-01-09T23:59:59.999999Z",
        "2025-01-10T00:00:00Z",
        "2025-01-12T23:59:59.999999Z",
        "2025-01-13T00:00:00Z",
    ):
        _session(client, play, play, "2025-01-20T00:00:00Z")
    data = sessions(client, "start_date=2025-01-10&end_date=2025-01-12")
    assert [(row["date"], row["sessionCount"]) for row in data] == [
        ("2025-01-10", 1),
        ("2025-01-12", 1),
    ]


def test_weeks_and_months(client):
    track_all(
        client,
        ("play", "2024-12-29T12:00:00Z"),
        ("stop", "2024-12-29T12:00:10Z"),  # Sunday
        ("play", "2024-12-30T12:00:00Z"),
        ("stop", "2024-12-30T12:00:20Z"),  # Monday
        ("play", "2025-01-05T23:59:59Z"),
        ("stop", "2025-01-06T00:00:29Z"),  # Sunday
        ("play", "2026-01-01T12:00:00Z"),
        ("stop", "2026-01-01T12:01:00Z"),
    )  # Thursday
    query = "start_date=2024-12-01&end_date=2026-01-31"
    assert sessions(client, query + "&group_by=week") == [
        day("2024-12-23", 10, 1, 10),
        day("2024-12-30", 50, 2, 25),
        day("2025-12-29", 60, 1, 60),
    ]
    assert sessions(client, query + "&group_by=month") == [
        day("2024-12-01", 30, 2, 15),
        day("2025-01-01", 30, 1, 30),
        day("2026-01-01", 60, 1, 60),
    ]


def test_periods_without_sessions_are_left_out(client):
    track_all(
        client,
        ("play", "2025-01-02T10:00:00Z"),
        ("stop", "2025-01-02T10:00:01Z"),
        ("play", "2025-01-20T10:00:00Z"),
        ("stop", "2025-01-20T10:00:02Z"),
        ("play", "2025-01-10T10:00:00Z"),
    )
    assert sessions(client) == [day("2025-01-02", 1, 1, 1), day("2025-01-20", 2, 1, 2)]


# --- durations and rounding ------------------------------------------------------------------


@pytest.mark.parametrize(
    "stop, total",
    [
        ("2025-01-10T10:00:00.499Z", 0),
        ("2025-01-10T10:00:00.500Z", 1),  # half: up (banker's rounding would give 0)
        ("2025-01-10T10:00:01.499Z", 1),
        ("2025-01-10T10:00:02.500Z", 3),  # half: up (banker's rounding would give 2)
        ("2025-01-10T10:00:02.501Z", 3),
    ],
)
def test_total_is_rounded_half_up(client, stop, total):
    _session(client, "u1", "2025-01-10T10:00:00Z", stop)
    assert sessions(client) == [day("2025-01-10", total, 1, total)]


def test_average_is_rounded_half_up_from_the_exact_total(client):
    # 2 s and 3 s: average 2.5 -> 3. 0.4 s + 0.4 s: each rounds to 0, the total 0.8 to 1.
    _session(client, "a", "2025-01-10T10:00:00Z", "2025-01-10T10:00:02Z")
    _session(client, "b", "2025-01-10T11:00:00Z", "2025-01-10T11:00:03Z")
    _session(client, "c", "2025-01-11T10:00:00Z", "2025-01-11T10:00:00.400Z")
    _session(client, "d", "2025-01-11T11:00:00Z", "2025-01-11T11:00:00.400Z")
    assert sessions(client) == [day("2025-01-10", 5, 2, 3), day("2025-01-11", 1, 2, 0)]


def test_durations_are_exact_to_the_millisecond_and_beyond(client):
    # 1.4995 s is below the half: 1 (rounding each timestamp to milliseconds first would give
    # 1.500 s and then 2). 3 x 0.1665 s = 0.4995 s: 0, and its average 0.1665 s: 0.
    _session(client, "a", "2025-01-10T10:00:00.0004Z", "2025-01-10T10:00:01.4999Z")
    for user in ("b", "c", "d"):
        _session(client, user, "2025-01-11T10:00:00.0000Z", "2025-01-11T10:00:00.1665Z")
    assert sessions(client) == [day("2025-01-10", 1, 1, 1), day("2025-01-11", 0, 3, 0)]


def test_long_sessions_spanning_days_and_months(client):
    _session(client, "a", "2024-12-31T12:00:00Z", "2025-03-01T12:00:00.5Z")
    expected_seconds = 60 * 86400 + 1  # 60 days and a half second, rounded up
    assert sessions(client, "start_date=2024-12-01&end_date=2024-12-31") == [
        day("2024-12-31", expected_seconds, 1, expected_seconds)
    ]


def test_durations_are_json_integers(client):
    _session(client, "a", "2025-01-10T10:00:00Z", "2025-01-10T10:00:01.5Z")
    raw = client.get(f"/sessions?{JANUARY}").get_data(as_text=True)
    [row] = json.loads(raw)["data"]
    for key in ("totalDuration", "sessionCount", "averageDuration"):
        assert type(row[key]) is int, key
