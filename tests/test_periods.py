"""analytics.periods: the SQL date constructs give the same answers on every backend, and a
dialect without an implementation fails to compile instead of answering wrongly."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, literal, select
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import CompileError

from analytics.models import Event
from analytics.periods import microseconds_between, period_label, utc_date

UTC = timezone.utc

MOMENTS = [
    datetime(2024, 12, 29, 23, 59, 59, 999_999, tzinfo=UTC),  # Sunday, last microsecond
    datetime(2024, 12, 30, 0, 0, tzinfo=UTC),                 # Monday
    datetime(2025, 1, 5, 23, 59, 59, 999_600, tzinfo=UTC),    # rounds up at milliseconds
    datetime(2024, 2, 29, 12, 0, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 0, tzinfo=UTC),                   # Thursday
    datetime(1, 1, 1, 0, 0, tzinfo=UTC),                      # the first representable day
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # and the last
]


def expected(moment: datetime, group_by: str) -> str:
    day = moment.date()
    if group_by == "week":
        day -= timedelta(days=day.weekday())
    elif group_by == "month":
        day = day.replace(day=1)
    return day.isoformat()


def test_dates_and_labels_of_stored_timestamps(engine):
    with engine.begin() as conn:
        conn.execute(insert(Event), [
            {"id": n, "event": "e", "user_id": "u", "occurred_at": moment,
             "received_at": moment} for n, moment in enumerate(MOMENTS, start=1)])
        day = utc_date(Event.occurred_at)
        rows = conn.execute(select(Event.id, day, period_label(day, "day"),
                                   period_label(day, "week"), period_label(day, "month"))
                            .order_by(Event.id)).all()
    for moment, (_, as_date, by_day, by_week, by_month) in zip(MOMENTS, rows):
        assert as_date == moment.date()
        assert by_day == expected(moment, "day")
        assert by_month == expected(moment, "month")
        if moment.year > 1:  # the Monday before 0001-01-01 does not exist
            assert by_week == expected(moment, "week")


def test_microseconds_between_is_exact(engine):
    play = datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    stops = [play, play + timedelta(microseconds=1), play + timedelta(seconds=1.5),
             play + timedelta(days=400, microseconds=123_457)]
    with engine.begin() as conn:
        conn.execute(insert(Event), [
            {"id": n, "event": "e", "user_id": "u", "occurred_at": play, "received_at": stop}
            for n, stop in enumerate(stops, start=1)])
        got = conn.scalars(select(microseconds_between(Event.occurred_at, Event.received_at))
                           .order_by(Event.id)).all()
    assert got == [(stop - play) // timedelta(microseconds=1) for stop in stops]


def test_unknown_group_by_is_refused():
    with pytest.raises(ValueError):
        period_label(utc_date(Event.occurred_at), "year")


@pytest.mark.parametrize("construct", [
    lambda: utc_date(Event.occurred_at),
    lambda: period_label(literal(date(2025, 1, 1)), "week"),
    lambda: microseconds_between(Event.occurred_at, Event.received_at),
])
def test_a_dialect_without_an_implementation_does_not_compile(construct):
    with pytest.raises(CompileError, match="mysql"):
        select(construct()).compile(dialect=mysql.dialect())
