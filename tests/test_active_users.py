"""GET /active-users: distinct users per local period, on the contract's own cases, on both
backends (the generated histories are in test_properties.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from analytics import dialects, writer
from analytics.aggregates import active_users
from analytics.aggregates.active_users import pieces
from analytics.models import ActivityLog, Event, UserOrdinal
from analytics.periods import bucket_of
from tests.helpers import assert_error, assert_exact, get_data, track


def users(client, query: str) -> list[dict]:
    return get_data(client, query, "/active-users")


def error(client, query: str) -> str:
    """The message of the 400 that GET /active-users?query answers."""
    return assert_error(client.get(f"/active-users?{query}"), 400)["message"]


def test_a_user_active_on_two_days_counts_once_in_their_week(client):
    track(client, "play", "2025-01-06T10:00:00Z", "ann")  # a Monday
    track(client, "play", "2025-01-07T10:00:00Z", "ann")
    track(client, "view", "2025-01-07T11:00:00Z", "bob")
    track(client, "view", "2025-01-07T11:05:00Z", "bob")
    query = "start_date=2025-01-06&end_date=2025-01-12"
    assert users(client, query) == [
        {"date": "2025-01-06", "users": 1},
        {"date": "2025-01-07", "users": 2},
    ]
    assert users(client, query + "&group_by=week") == [{"date": "2025-01-06", "users": 2}]
    assert users(client, query + "&group_by=month") == [{"date": "2025-01-01", "users": 2}]
    assert users(client, query + "&group_by=hour") == [
        {"date": "2025-01-06T10:00+00:00", "users": 1},
        {"date": "2025-01-07T10:00+00:00", "users": 1},
        {"date": "2025-01-07T11:00+00:00", "users": 1},
    ]


def test_days_weeks_and_months_are_local_in_any_zone(client):
    # Kathmandu is +05:45: its days start at 18:15 UTC the day before.
    track(client, "view", "2025-01-01T18:14:59Z", "ann")  # the 1st, 23:59:59 local
    track(client, "view", "2025-01-01T18:15:00Z", "bob")  # the 2nd, 00:00 local
    track(client, "view", "2025-01-31T18:15:00Z", "cat")  # February the 1st, local
    query = "start_date=2025-01-01&end_date=2025-02-28&tz=Asia/Kathmandu"
    assert users(client, query) == [
        {"date": "2025-01-01", "users": 1},
        {"date": "2025-01-02", "users": 1},
        {"date": "2025-02-01", "users": 1},
    ]
    assert users(client, query + "&group_by=month") == [
        {"date": "2025-01-01", "users": 2},
        {"date": "2025-02-01", "users": 1},
    ]
    assert users(client, "start_date=2025-01-01&end_date=2025-02-28&group_by=month") == [
        {"date": "2025-01-01", "users": 3}
    ]
    # Weeks starting on Wednesday (2025-01-01 is one), in the zone.
    assert users(client, query + "&group_by=week&week_start=WEDNESDAY") == [
        {"date": "2025-01-01", "users": 2},
        {"date": "2025-01-29", "users": 1},
    ]


def test_a_25_hour_day_counts_the_repeated_hour(client):
    # Beirut, 2024-10-27 00:00 +03:00 -> 2024-10-26 23:00 +02:00.
    track(client, "view", "2024-10-26T20:30:00Z", "ann")  # 23:30 +03:00 on the 26th
    track(client, "view", "2024-10-26T21:30:00Z", "bob")  # 23:30 +02:00, the 26th again
    track(client, "view", "2024-10-26T22:30:00Z", "ann")  # 00:30 +02:00 on the 27th
    query = "start_date=2024-10-26&end_date=2024-10-27&tz=Asia/Beirut"
    assert users(client, query) == [
        {"date": "2024-10-26", "users": 2},
        {"date": "2024-10-27", "users": 1},
    ]
    assert users(client, query + "&group_by=hour") == [
        {"date": "2024-10-26T23:00+03:00", "users": 1},
        {"date": "2024-10-26T23:00+02:00", "users": 1},
        {"date": "2024-10-27T00:00+02:00", "users": 1},
    ]
    assert users(client, query + "&event=view&group_by=week") == [
        {"date": "2024-10-21", "users": 2}
    ]


def test_the_event_filter_counts_only_users_who_sent_one(client):
    track(client, "play", "2025-01-01T10:00:00Z", "ann")
    track(client, "buy", "2025-01-01T11:00:00Z", "bob")
    track(client, "play", "2025-01-02T10:00:00Z", "bob")
    query = "start_date=2025-01-01&end_date=2025-01-03"
    assert users(client, query + "&event=play") == [
        {"date": "2025-01-01", "users": 1},
        {"date": "2025-01-02", "users": 1},
    ]
    assert users(client, query + "&event=play&event=buy") == [
        {"date": "2025-01-01", "users": 2},
        {"date": "2025-01-02", "users": 1},
    ]
    assert users(client, query + "&event=play&group_by=month") == [
        {"date": "2025-01-01", "users": 2}
    ]
    assert users(client, query + "&event=nothing") == []
    assert users(client, query + "&fill=zero&event=buy") == [
        {"date": "2025-01-01", "users": 1},
        {"date": "2025-01-02", "users": 0},
        {"date": "2025-01-03", "users": 0},
    ]


def test_fill_zero_lists_every_period(client):
    assert users(client, "start_date=2025-01-01&end_date=2025-01-02&fill=zero") == [
        {"date": "2025-01-01", "users": 0},
        {"date": "2025-01-02", "users": 0},
    ]
    assert users(client, "start_date=2025-01-01&end_date=2025-01-02") == []


def test_deleting_a_users_events_takes_them_out_at_once(client, engine):
    for user in ("ann", "bob"):
        track(client, "view", "2025-01-01T10:00:00Z", user)
        track(client, "view", "2025-01-01T10:01:00Z", user)
    track(client, "view", "2025-01-02T10:00:00Z", "bob")
    query = "start_date=2025-01-01&end_date=2025-01-02&group_by=week"
    assert users(client, query) == [{"date": "2024-12-30", "users": 2}]
    # One of ann's two events in that quarter hour: she is still active.
    one = select(Event.id).where(Event.user_id == "ann").order_by(Event.id).limit(1)
    assert writer.delete_events(engine, select(one.subquery().c.id)) == 1
    assert users(client, query) == [{"date": "2024-12-30", "users": 2}]
    assert writer.delete_events(engine, select(Event.id).where(Event.user_id == "ann")) == 1
    assert users(client, query) == [{"date": "2024-12-30", "users": 1}]
    assert users(client, "start_date=2025-01-01&end_date=2025-01-01") == [
        {"date": "2025-01-01", "users": 1}
    ]


def logged(engine) -> list[tuple[str, int]]:
    """The (user_id, bucket) pairs in the log, not yet folded into the bitmaps."""
    with Session(engine) as session:
        return sorted(session.execute(select(ActivityLog.user_id, ActivityLog.bucket)).all())


def test_writes_log_their_pairs_and_a_read_folds_them_first(client, engine):
    track(client, "view", "2025-01-01T10:00:00Z", "ann")
    track(client, "view", "2025-01-01T10:01:00Z", "ann")  # the same quarter hour
    track(client, "view", "2025-01-01T10:20:00Z", "bob")
    at = bucket_of(datetime(2025, 1, 1, 10, tzinfo=UTC))
    assert logged(engine) == [("ann", at), ("ann", at), ("bob", at + 1)]
    assert users(client, "start_date=2025-01-01&end_date=2025-01-01") == [
        {"date": "2025-01-01", "users": 2}
    ]
    assert logged(engine) == []
    track(client, "view", "2025-01-01T11:00:00Z", "cat")  # read at once, too
    assert users(client, "start_date=2025-01-01&end_date=2025-01-01") == [
        {"date": "2025-01-01", "users": 3}
    ]
    assert_exact(engine)


def test_a_write_whose_id_hashes_to_zero_wakes_the_folding_thread(client, engine, monkeypatch):
    track(client, "view", "2025-01-01T10:00:00Z", "ann")
    assert len(logged(engine)) == 1
    monkeypatch.setattr(active_users, "folds_log", lambda ids: True)
    track(client, "view", "2025-01-01T10:00:00Z", "bob")
    assert writer.FOLDER.wait_idle(30)
    assert logged(engine) == []
    with Session(engine) as session:
        assert sorted(session.scalars(select(UserOrdinal.user_id))) == ["ann", "bob"]
    assert_exact(engine)


def test_the_folding_thread_folds_chunk_by_chunk_until_the_log_is_empty(client, engine):
    for hour in range(5):
        track(client, "view", f"2025-01-01T1{hour}:00:00Z", f"u{hour}")
    assert len(logged(engine)) == 5
    writer.fold_activity(engine, chunk=2)  # three transactions: 2, 2, then 1
    assert logged(engine) == []
    assert_exact(engine)


def test_the_folding_thread_folds_a_wake_at_once_where_writers_never_wait_for_it(
    client, engine, monkeypatch
):
    """SQLite's writers queue behind a fold's transaction: the thread moves FOLD_CHUNK pairs a
    transaction there. PostgreSQL's do not, so it moves a wake's worth (2**FOLD_BITS)."""
    for hour in range(5):
        track(client, "view", f"2025-01-01T1{hour}:00:00Z", f"u{hour}")
    assert len(logged(engine)) == 5
    monkeypatch.setattr(active_users, "FOLD_CHUNK", 2)
    monkeypatch.setattr(active_users, "FOLD_BITS", 2)
    dialect = dialects.of(engine)
    moved: list[int] = []
    fold = type(dialect).fold_activity

    def counted(self, conn, limit=None):
        moved.append(fold(self, conn, limit))
        return moved[-1]

    monkeypatch.setattr(type(dialect), "fold_activity", counted)
    writer.FOLDER.wake(engine)
    assert writer.FOLDER.wait_idle(30)
    assert moved == ([4, 1] if dialect.name == "postgresql" else [2, 2, 1])
    assert logged(engine) == []
    assert_exact(engine)


def _rows_read_from_the_log(plan: dict) -> float:
    """Rows that the plan's nodes read from activity_log or from a CTE (each built from it),
    over all their loops."""
    read = 0.0
    if plan.get("Relation Name") == "activity_log" or plan["Node Type"] == "CTE Scan":
        read += plan["Actual Rows"] * plan["Actual Loops"]
    for child in plan.get("Plans", []):
        read += _rows_read_from_the_log(child)
    return read


def test_a_fold_reads_the_log_a_bounded_number_of_times_whatever_its_statistics_say(
    backend, engine
):
    """Autovacuum often analyses the log just after a fold has emptied it, and the planner
    then takes it for empty until the next analysis. A fold must not then read the log, or
    what it derives from it, once per logged pair: its time would grow with the square of
    the log's length."""
    if backend != "postgresql":
        pytest.skip("SQLite's fold is Python's, and its planner always uses the indexes")
    from analytics.dialects.postgresql import _FOLD_ACTIVITY

    pairs = 1500
    rows = [{"user_id": f"u{n}", "bucket": 2_000_000 + n % 50} for n in range(pairs)]
    with engine.begin() as conn:
        conn.execute(ActivityLog.__table__.insert(), rows)
    with engine.begin() as conn:
        conn.execute(ActivityLog.__table__.delete())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE activity_log")  # empty, with pages: "always empty"
    with engine.begin() as conn:
        conn.execute(ActivityLog.__table__.insert(), rows)
    with engine.connect() as conn:
        with conn.begin():
            explained = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + _FOLD_ACTIVITY, {"limit": None}
            ).scalar_one()
            conn.rollback()
    read = _rows_read_from_the_log(explained[0]["Plan"])
    assert 0 < read <= 20 * pairs


def test_a_delete_takes_the_logged_pairs_of_its_users_with_it(client, engine):
    """An erased user's pairs, still in the log, must not be folded into the bitmaps later."""
    track(client, "view", "2025-01-01T10:00:00Z", "ann")
    track(client, "view", "2025-01-01T10:00:00Z", "bob")
    assert len(logged(engine)) == 2
    assert writer.delete_events(engine, select(Event.id).where(Event.user_id == "ann")) == 1
    assert logged(engine) == []
    with Session(engine) as session:
        assert list(session.scalars(select(UserOrdinal.user_id))) == ["bob"]
    assert users(client, "start_date=2025-01-01&end_date=2025-01-01") == [
        {"date": "2025-01-01", "users": 1}
    ]
    assert_exact(engine)


def test_events_before_1970_are_counted_in_the_pieces_that_hold_them(client, engine):
    # Buckets before the epoch are negative: a piece starts at the bucket rounded down.
    track(client, "view", "1969-12-31T05:00:00Z", "bob")
    track(client, "view", "1969-12-31T23:50:00Z", "ann")
    track(client, "view", "1970-01-01T00:10:00Z", "ann")
    query = "start_date=1969-12-31&end_date=1970-01-01"
    assert users(client, query) == [
        {"date": "1969-12-31", "users": 2},
        {"date": "1970-01-01", "users": 1},
    ]
    assert users(client, query + "&group_by=month") == [
        {"date": "1969-12-01", "users": 2},
        {"date": "1970-01-01", "users": 1},
    ]
    # Kolkata's 1970-01-01 began at 18:30 UTC the day before.
    assert users(client, query + "&tz=Asia/Kolkata") == [
        {"date": "1969-12-31", "users": 1},
        {"date": "1970-01-01", "users": 1},
    ]
    assert_exact(engine)


def test_the_contracts_messages(client):
    assert (
        error(client, "start_date=2025-01-01&end_date=2025-01-02&user_id=u")
        == "user_id is not a parameter of /active-users"
    )
    # The other problems come first.
    assert error(client, "end_date=2025-01-02&user_id=u") == "start_date and end_date are required"
    assert (
        error(client, "start_date=2025-01-01&end_date=2025-01-02&tz=Mars/Base&user_id=u")
        == "tz must be an IANA time zone name, e.g. Europe/Berlin"
    )
    assert (
        error(client, "start_date=2025-01-01&end_date=2025-01-02&event=")
        == "event must not be empty"
    )


def test_pieces_tile_a_run_with_the_largest_aligned_spans():
    # A Kathmandu day: 18:15 UTC to 18:15 UTC the next day, in quarter-hour buckets.
    day = 96 * 20_000
    lo, hi = day - 23, day + 73
    tiles = pieces(lo, hi)
    assert tiles == (
        [(1, day - 23), (1, day - 22), (1, day - 21)]
        + [(4, day - 20 + 4 * i) for i in range(5)]
        + [(24, day), (24, day + 24), (24, day + 48), (1, day + 72)]
    )
    covered = [b for span, first in tiles for b in range(first, first + span)]
    assert covered == list(range(lo, hi))
    assert pieces(day, day + 96 * 3) == [(96, day), (96, day + 96), (96, day + 192)]
    assert pieces(5, 5) == []
