"""analytics.periods and the SQL constructs of analytics.dialects.

- ``local_periods`` is checked against plain zoneinfo reasoning: for every minute around the
  range, the period that owns the minute's bucket must be the one the minute's local wall-clock
  date, hour and offset say (or none outside the range), and the labels come in the order of
  their first instant. Cases: Lord Howe's 30-minute shift, Chatham's +12:45/+13:45, Los Angeles
  spring forward (the 02:00 hour missing) and fall back (01:00 twice), Beirut's fall-back at
  midnight (the repeated hour belongs to the earlier date), weeks starting on Sunday, months.
- ``dialects.bucket_of`` and ``dialects.microseconds_between`` give the same answers on every
  backend as Python does, before 1970 and to the microsecond included; a database without an
  implementation fails to compile instead of answering wrongly.
"""

from __future__ import annotations

import bisect
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import bindparam, insert, literal, select
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import CompileError

from analytics import periods as periods_module
from analytics.dialects import bucket_of, microseconds_between, period_index
from analytics.models import Event
from analytics.periods import local_periods

UTC = UTC
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
QUARTER = timedelta(minutes=15)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


# --- plain zoneinfo reasoning --------------------------------------------------------------------


def offset_text(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // MINUTE
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def wall_label(at: datetime, zone: str, group_by: str, week_start: int) -> tuple[date, str]:
    """(local date, label) of an instant, as the contract's "Query options" define them."""
    local = at.astimezone(ZoneInfo(zone))
    day = local.date()
    if group_by == "hour":
        return day, f"{day.isoformat()}T{local.hour:02d}:00{offset_text(local.utcoffset())}"
    if group_by == "week":
        return day, (day - timedelta(days=(day.weekday() - week_start) % 7)).isoformat()
    if group_by == "month":
        return day, day.replace(day=1).isoformat()
    return day, day.isoformat()


def expected_minutes(start: date, end: date, zone: str, group_by: str, week_start: int = 0):
    """(minute, label or None) for every minute from a day before the range to a day after."""
    at = datetime.combine(start - timedelta(days=1), time.min, tzinfo=UTC)
    stop = datetime.combine(end + timedelta(days=2), time.min, tzinfo=UTC)
    while at < stop:
        day, label = wall_label(at, zone, group_by, week_start)
        yield at, (label if start <= day <= end else None)
        at += MINUTE


def owner(periods, at: datetime) -> str | None:
    """The label of the run of ``periods`` that holds the bucket of ``at`` (None: no run)."""
    bucket = (at - EPOCH) // QUARTER  # whole quarter hours since the epoch, rounded down
    if not periods.bounds or not periods.bounds[0] <= bucket < periods.bounds[-1]:
        return None
    return periods.run_labels[bisect.bisect_right(periods.bounds, bucket) - 1]


def check_against_zoneinfo(start, end, zone, group_by, week_start=0):
    """local_periods agrees with zoneinfo minute by minute; returns its labels."""
    periods = local_periods(start, end, zone, group_by, week_start)
    assert list(periods.bounds) == sorted(set(periods.bounds)), "bounds must ascend"
    assert len(periods.run_labels) == len(periods.bounds) - 1
    first_seen: dict[str, None] = {}
    wrong = []
    for at, label in expected_minutes(start, end, zone, group_by, week_start):
        if owner(periods, at) != label:
            wrong.append((at.isoformat(), label, owner(periods, at)))
        if label is not None:
            first_seen.setdefault(label)
    assert not wrong, wrong[:5]
    assert list(periods.labels) == list(first_seen)
    assert set(periods.run_labels) - {None} == set(periods.labels)
    return list(periods.labels)


def hours_of(labels: list[str], day: str) -> list[str]:
    return [label for label in labels if label.startswith(day)]


# --- local_periods -------------------------------------------------------------------------------


def test_lord_howe_shifts_by_half_an_hour():
    zone = "Australia/Lord_Howe"
    # 2024-04-07 02:00 +11:00 -> 01:30 +10:30: 01:30-02:00 happens twice, the day lasts 24.5 h.
    labels = check_against_zoneinfo(date(2024, 4, 7), date(2024, 4, 7), zone, "hour")
    assert hours_of(labels, "2024-04-07T0")[:4] == [
        "2024-04-07T00:00+11:00",
        "2024-04-07T01:00+11:00",
        "2024-04-07T01:00+10:30",
        "2024-04-07T02:00+10:30",
    ]
    assert len(labels) == 25
    # 2024-10-06 02:00 +10:30 -> 02:30 +11:00: the 02:00 hour lasts 30 minutes, the day 23.5 h.
    labels = check_against_zoneinfo(date(2024, 10, 6), date(2024, 10, 6), zone, "hour")
    assert hours_of(labels, "2024-10-06T0")[:4] == [
        "2024-10-06T00:00+10:30",
        "2024-10-06T01:00+10:30",
        "2024-10-06T02:00+11:00",
        "2024-10-06T03:00+11:00",
    ]
    assert len(labels) == 24
    periods = local_periods(date(2024, 10, 6), date(2024, 10, 6), zone, "day")
    assert periods.labels == ("2024-10-06",)
    assert (periods.end_bucket - periods.first_bucket) * QUARTER == timedelta(hours=23.5)
    periods = local_periods(date(2024, 4, 7), date(2024, 4, 7), zone, "day")
    assert (periods.end_bucket - periods.first_bucket) * QUARTER == timedelta(hours=24.5)


def test_chatham_quarter_hour_offsets():
    zone = "Pacific/Chatham"
    # 2024-04-07 03:45 +13:45 -> 02:45 +12:45.
    labels = check_against_zoneinfo(date(2024, 4, 6), date(2024, 4, 8), zone, "hour")
    assert hours_of(labels, "2024-04-07T0")[:6] == [
        "2024-04-07T00:00+13:45",
        "2024-04-07T01:00+13:45",
        "2024-04-07T02:00+13:45",
        "2024-04-07T03:00+13:45",
        "2024-04-07T02:00+12:45",
        "2024-04-07T03:00+12:45",
    ]
    # 2024-09-29 02:45 +12:45 -> 03:45 +13:45.
    labels = check_against_zoneinfo(date(2024, 9, 29), date(2024, 9, 29), zone, "hour")
    assert hours_of(labels, "2024-09-29T0")[:4] == [
        "2024-09-29T00:00+12:45",
        "2024-09-29T01:00+12:45",
        "2024-09-29T02:00+12:45",
        "2024-09-29T03:00+13:45",
    ]
    assert check_against_zoneinfo(date(2024, 9, 28), date(2024, 9, 30), zone, "day") == [
        "2024-09-28",
        "2024-09-29",
        "2024-09-30",
    ]


def test_los_angeles_spring_forward_and_fall_back():
    zone = "America/Los_Angeles"
    labels = check_against_zoneinfo(date(2024, 3, 10), date(2024, 3, 10), zone, "hour")
    assert "2024-03-10T02:00-08:00" not in labels and "2024-03-10T02:00-07:00" not in labels
    assert hours_of(labels, "2024-03-10T0")[:3] == [
        "2024-03-10T00:00-08:00",
        "2024-03-10T01:00-08:00",
        "2024-03-10T03:00-07:00",
    ]
    assert len(labels) == 23
    labels = check_against_zoneinfo(date(2024, 11, 3), date(2024, 11, 3), zone, "hour")
    assert hours_of(labels, "2024-11-03T0")[:4] == [
        "2024-11-03T00:00-07:00",
        "2024-11-03T01:00-07:00",
        "2024-11-03T01:00-08:00",
        "2024-11-03T02:00-08:00",
    ]
    assert len(labels) == 25
    assert check_against_zoneinfo(date(2024, 11, 2), date(2024, 11, 4), zone, "day") == [
        "2024-11-02",
        "2024-11-03",
        "2024-11-04",
    ]


def _beirut_falls_back_at_midnight() -> bool:
    zone = ZoneInfo("Asia/Beirut")
    before = datetime(2024, 10, 26, 20, 59, tzinfo=UTC).astimezone(zone)
    after = datetime(2024, 10, 26, 21, 0, tzinfo=UTC).astimezone(zone)
    return before.replace(tzinfo=None) == datetime(2024, 10, 26, 23, 59) and after.replace(
        tzinfo=None
    ) == datetime(2024, 10, 26, 23, 0)


@pytest.mark.skipif(
    not _beirut_falls_back_at_midnight(),
    reason="this tzdata has no midnight fall-back in Asia/Beirut in 2024",
)
def test_a_midnight_fall_back_repeats_the_earlier_date():
    zone = "Asia/Beirut"
    # 2024-10-27 00:00 +03:00 -> 2024-10-26 23:00 +02:00: 23:00-24:00 of the 26th twice.
    labels = check_against_zoneinfo(date(2024, 10, 26), date(2024, 10, 27), zone, "hour")
    assert labels[22:26] == [
        "2024-10-26T22:00+03:00",
        "2024-10-26T23:00+03:00",
        "2024-10-26T23:00+02:00",
        "2024-10-27T00:00+02:00",
    ]
    assert check_against_zoneinfo(date(2024, 10, 26), date(2024, 10, 27), zone, "day") == [
        "2024-10-26",
        "2024-10-27",
    ]
    periods = local_periods(date(2024, 10, 26), date(2024, 10, 26), zone, "day")
    assert (periods.end_bucket - periods.first_bucket) * QUARTER == timedelta(hours=25)
    # Only the 27th: the repeated hour is not part of it.
    periods = local_periods(date(2024, 10, 27), date(2024, 10, 27), zone, "day")
    assert periods.first_bucket * QUARTER + EPOCH == datetime(2024, 10, 26, 22, tzinfo=UTC)


def test_weeks_start_on_the_day_asked_for():
    # 2025-01-01 is a Wednesday; Sunday-weeks start on 2024-12-29, 2025-01-05, 2025-01-12.
    assert check_against_zoneinfo(date(2025, 1, 1), date(2025, 1, 14), "UTC", "week", 6) == [
        "2024-12-29",
        "2025-01-05",
        "2025-01-12",
    ]
    assert check_against_zoneinfo(date(2025, 1, 1), date(2025, 1, 14), "UTC", "week", 0) == [
        "2024-12-30",
        "2025-01-06",
        "2025-01-13",
    ]
    # Berlin's spring forward (2025-03-30, a Sunday) inside a Sunday-week and at its start.
    labels = check_against_zoneinfo(date(2025, 3, 25), date(2025, 4, 6), "Europe/Berlin", "week", 6)
    assert labels == ["2025-03-23", "2025-03-30", "2025-04-06"]
    for week_start in range(7):
        check_against_zoneinfo(
            date(2024, 10, 24), date(2024, 11, 5), "America/Los_Angeles", "week", week_start
        )


def test_months_are_unions_of_local_days():
    assert check_against_zoneinfo(
        date(2024, 10, 15), date(2024, 12, 5), "America/Los_Angeles", "month"
    ) == ["2024-10-01", "2024-11-01", "2024-12-01"]
    assert check_against_zoneinfo(
        date(2024, 2, 28), date(2024, 3, 1), "Asia/Kathmandu", "month"
    ) == ["2024-02-01", "2024-03-01"]
    assert (
        check_against_zoneinfo(date(2024, 3, 31), date(2024, 4, 1), "Asia/Kolkata", "hour")[0]
        == "2024-03-31T00:00+05:30"
    )


def test_utc_hours_end_in_plus_zero():
    labels = check_against_zoneinfo(date(2024, 12, 31), date(2025, 1, 1), "UTC", "hour")
    assert labels[0] == "2024-12-31T00:00+00:00" and labels[-1] == "2025-01-01T23:00+00:00"
    assert len(labels) == 48


def test_unknown_group_by_is_refused():
    with pytest.raises(ValueError):
        local_periods(date(2025, 1, 1), date(2025, 1, 1), "UTC", "year")


# --- the SQL constructs on every backend ---------------------------------------------------------

MOMENTS = [
    datetime(1970, 1, 1, 0, 0, tzinfo=UTC),
    datetime(1970, 1, 1, 0, 14, 59, 999_999, tzinfo=UTC),
    datetime(1970, 1, 1, 0, 15, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # bucket -1
    datetime(1969, 12, 31, 23, 45, tzinfo=UTC),  # bucket -1, its first instant
    datetime(1969, 12, 31, 23, 44, 59, 999_999, tzinfo=UTC),  # bucket -2
    datetime(1969, 12, 31, 23, 44, 59, 1, tzinfo=UTC),
    datetime(1901, 7, 4, 3, 7, 30, 250_000, tzinfo=UTC),
    datetime(1900, 1, 1, 0, 0, tzinfo=UTC),
    datetime(2024, 10, 27, 0, 59, 59, 999_999, tzinfo=UTC),
    datetime(2024, 10, 27, 1, 0, tzinfo=UTC),
    datetime(2024, 12, 29, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2025, 1, 5, 23, 59, 59, 999_600, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),  # past 32-bit seconds
    datetime(1, 1, 1, 0, 0, tzinfo=UTC),  # the first representable instant
    datetime(1, 1, 1, 0, 14, 59, 999_999, tzinfo=UTC),
    datetime(4000, 1, 1, 0, 14, 59, 999_999, tzinfo=UTC),
]
# The last microsecond of a bucket far in the future (no API request can store these: a future
# timestamp is replaced by the server's time). PostgreSQL's numeric division keeps about 16
# significant digits: EXTRACT(EPOCH ...) / 900 rounded x.999999998889 up to x + 1 from about
# the year 4826 on.
FAR_FUTURE = [
    datetime(4826, 1, 1, 0, 14, 59, 999_999, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # the last representable instant
]


def python_bucket(at: datetime) -> int:
    """Whole quarter hours since the epoch, rounded down, in integer microseconds."""
    micro = (at - EPOCH) // timedelta(microseconds=1)
    return micro // (15 * 60 * 1_000_000)


def _store(engine, pairs):
    with engine.begin() as conn:
        conn.execute(
            insert(Event),
            [
                {"id": n, "event": "e", "user_id": "u", "occurred_at": at, "received_at": other}
                for n, (at, other) in enumerate(pairs, start=1)
            ],
        )


def test_python_bucket_of_is_floor_division():
    for at in MOMENTS + FAR_FUTURE:
        assert periods_module.bucket_of(at) == python_bucket(at), at
        assert periods_module.bucket_start(python_bucket(at)) <= at
        if at.year < 9999:  # the bucket after the last one is beyond datetime's range
            assert at < periods_module.bucket_start(python_bucket(at) + 1)


def test_bucket_of_stored_timestamps(engine):
    _store(engine, [(at, at) for at in MOMENTS])
    with engine.connect() as conn:
        got = conn.execute(
            select(Event.occurred_at, bucket_of(Event.occurred_at)).order_by(Event.id)
        ).all()
    assert [at for at, _ in got] == MOMENTS  # stored to the microsecond
    assert [bucket for _, bucket in got] == [periods_module.bucket_of(at) for at in MOMENTS]
    assert [bucket for _, bucket in got] == [python_bucket(at) for at in MOMENTS]


def test_bucket_of_far_future_timestamps(engine):
    _store(engine, [(at, at) for at in FAR_FUTURE])
    with engine.connect() as conn:
        got = conn.scalars(select(bucket_of(Event.occurred_at)).order_by(Event.id)).all()
    assert got == [python_bucket(at) for at in FAR_FUTURE]


def test_microseconds_between_is_exact(engine):
    starts = [
        datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(1950, 6, 1, 0, 0, 0, 1, tzinfo=UTC),
    ]
    steps = [
        timedelta(0),
        timedelta(microseconds=1),
        timedelta(seconds=1.5),
        timedelta(microseconds=-1),
        timedelta(seconds=-2, microseconds=999_999),
        timedelta(days=400, microseconds=123_457),
        timedelta(days=-20_000, microseconds=7),
    ]
    pairs = [(start, start + step) for start in starts for step in steps]
    pairs.append(
        (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))
    )
    _store(engine, pairs)
    with engine.connect() as conn:
        got = conn.scalars(
            select(microseconds_between(Event.occurred_at, Event.received_at)).order_by(Event.id)
        ).all()
    assert got == [(end - start) // timedelta(microseconds=1) for start, end in pairs]


@pytest.mark.parametrize(
    "construct",
    [
        lambda: bucket_of(Event.occurred_at),
        lambda: microseconds_between(Event.occurred_at, Event.received_at),
        lambda: period_index(literal(3), bindparam("bounds")),
    ],
)
def test_a_dialect_without_an_implementation_does_not_compile(construct):
    with pytest.raises(CompileError, match="mysql"):
        select(construct()).compile(dialect=mysql.dialect())
