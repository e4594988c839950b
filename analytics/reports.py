"""Reading the answers of /metrics, /sessions and /active-users: the aggregates summed (or,
for active users, united) per local period for all users, or one user's own rows. Plain
functions of a Session: no Flask, no commit."""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    Engine,
    Integer,
    Select,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from analytics import dialects, writer
from analytics.aggregates.active_users import pieces as active_user_pieces
from analytics.dialects import bucket_of, json_counts, period_index
from analytics.models import (
    QUARTERS,
    ActivityLog,
    Event,
    EventHour,
    PlayStopSession,
    SessionBucket,
    quarter_of,
    table_of,
)
from analytics.periods import Periods, bucket_start, local_periods

# fill=zero lists every period of the range: beyond this many, the answer is refused rather
# than built.
MAX_FILLED_PERIODS = 100_000


class TooManyPeriods(ValueError):
    """fill=zero over a range with more periods than MAX_FILLED_PERIODS."""


@dataclass(frozen=True)
class PeriodQuery:
    """A validated query of a per-period endpoint (API.md, "Query options")."""

    start: date
    end: date
    group_by: str = "day"
    tz: str = "UTC"
    week_start: int = 0  # 0 = Monday
    events: tuple[str, ...] = ()  # empty: every event
    user_id: str | None = None
    fill_zero: bool = False


def query_periods(session: Session, query: PeriodQuery) -> Periods | None:
    """The query's periods; without fill=zero only those around the stored events (None when
    there are none), so that a range of centuries costs no more than the data in it."""
    start, end = query.start, query.end
    if query.fill_zero:
        days = (end - start).days + 1
        if days * (25 if query.group_by == "hour" else 1) > MAX_FILLED_PERIODS:
            raise TooManyPeriods(f"fill=zero would list more than {MAX_FILLED_PERIODS} periods")
    else:
        first, last = session.execute(_DATA_SPAN).one()
        if first is None:
            return None
        # A local date is within a day of the UTC date of the same instant.
        start = max(start, _day_beside(bucket_start(first).date(), -1))
        end = min(end, _day_beside(bucket_start(last).date(), 1))
        if start > end:
            return None
    periods = local_periods(start, end, query.tz, query.group_by, query.week_start)
    return periods if periods.labels else None


def _day_beside(day: date, step: int) -> date:
    try:
        return day + timedelta(days=step)
    except OverflowError:  # the first or last day there is
        return day


_hours = table_of(EventHour)
_session_buckets = table_of(SessionBucket)
_sessions = table_of(PlayStopSession)
_events = table_of(Event)
_log = table_of(ActivityLog)
_DATA_SPAN = select(func.min(_hours.c.bucket), func.max(_hours.c.bucket))
_LO: BindParameter[Any] = bindparam("lo")
_HI: BindParameter[Any] = bindparam("hi")
_BOUNDS: BindParameter[Any] = bindparam("bounds")
_FIRST, _STEP = bindparam("first", type_=Integer), bindparam("step", type_=Integer)


def _grouped(
    rows_with_bucket: Select[Any] | CompoundSelect,
    keys: tuple[str, ...],
    sums: tuple[str, ...],
    regular: bool,
) -> Select[Any]:
    """``SELECT period, sum(...) ... GROUP BY period`` over a select whose first column is a
    bucket: the period is the bucket's run (1-based) among :bounds, or, when the runs are
    ``regular`` (all :step buckets long, from :first), arithmetic that gives the same index."""
    inner = rows_with_bucket.subquery("in_range")
    bucket, *others = inner.c
    if regular:
        period = ((bucket - _FIRST) // _STEP + 1).label("period")
    else:
        period = period_index(bucket, _BOUNDS).label("period")
    keyed = select(period, *others).subquery("keyed")
    grouped = [keyed.c.period, *(keyed.c[name] for name in keys)]
    # (PostgreSQL sums bigints as numeric, which the driver would make Decimals of.)
    return select(
        *grouped, *(cast(func.sum(keyed.c[name]), BigInteger).label(name) for name in sums)
    ).group_by(*grouped)


def _per_period(per_event: Select[Any]) -> Select[Any]:
    """(period, JSON object of {event: count}) from (period, event, n) rows: one row per period
    instead of one per period and name, which by the hour is twenty times fewer rows to read.
    Counts of zero (shards that added up to nothing) are left out."""
    counted = per_event.subquery("per_event")
    return (
        select(counted.c.period, json_counts(counted.c.event, counted.c.n))
        .where(counted.c.n != 0)
        .group_by(counted.c.period)
    )


@functools.lru_cache(maxsize=64)
def _all_users_metrics(with_events: bool, regular: bool, cuts: tuple[int, ...]) -> Select[Any]:
    """(bucket, event, n) from ``event_hours``, each row cut into pieces at the quarters
    ``cuts`` (0 first) of its hour: the periods' bounds fall on no other quarter, so each
    piece lies in one period (docs/architecture.md, "The grain")."""
    t = _hours
    pieces = []
    for start, end in zip(cuts, (*cuts[1:], len(QUARTERS))):
        n = sum((t.c[name] for name in QUARTERS[start + 1 : end]), t.c[QUARTERS[start]])
        piece = select((t.c.bucket + start).label("bucket"), t.c.event, n.label("n")).where(
            t.c.bucket >= _LO - start, t.c.bucket < _HI - start
        )
        if with_events:
            piece = piece.where(t.c.event.in_(bindparam("events", expanding=True)))
        pieces.append(piece)
    rows = pieces[0] if len(pieces) == 1 else union_all(*pieces)
    return _per_period(_grouped(rows, ("event",), ("n",), regular))


def _user_metrics(with_events: bool, regular: bool) -> Select[Any]:
    rows = select(
        bucket_of(_events.c.occurred_at).label("bucket"), _events.c.event, literal(1).label("n")
    ).where(
        _events.c.user_id == bindparam("user_id"),
        _events.c.occurred_at >= _LO,
        _events.c.occurred_at < _HI,
    )
    if with_events:
        rows = rows.where(_events.c.event.in_(bindparam("events", expanding=True)))
    return _per_period(_grouped(rows, ("event",), ("n",), regular))


def _filtered_active_users(regular: bool) -> Select[Any]:
    """Distinct users per run of buckets, from the events themselves: the bitmaps do not keep
    event names."""
    rows = select(bucket_of(_events.c.occurred_at).label("bucket"), _events.c.user_id).where(
        _events.c.occurred_at >= _LO,
        _events.c.occurred_at < _HI,
        _events.c.event.in_(bindparam("events", expanding=True)),
    )
    inner = rows.subquery("in_range")
    if regular:
        period = ((inner.c.bucket - _FIRST) // _STEP + 1).label("period")
    else:
        period = period_index(inner.c.bucket, _BOUNDS).label("period")
    return select(period, func.count(inner.c.user_id.distinct())).group_by(period)


def _all_users_sessions(regular: bool) -> Select[Any]:
    t = _session_buckets
    rows = select(t.c.bucket, t.c.sessions, t.c.total_us).where(t.c.bucket >= _LO, t.c.bucket < _HI)
    return _grouped(rows, (), ("sessions", "total_us"), regular)


def _user_sessions(regular: bool) -> Select[Any]:
    t = _sessions
    rows = select(
        t.c.bucket, literal(1).label("sessions"), t.c.duration_us.label("total_us")
    ).where(t.c.user_id == bindparam("user_id"), t.c.play_at >= _LO, t.c.play_at < _HI)
    return _grouped(rows, (), ("sessions", "total_us"), regular)


_USER_METRICS = {
    (filtered, regular): _user_metrics(filtered, regular)
    for filtered in (False, True)
    for regular in (False, True)
}
_SESSIONS = {
    (user, regular): (_user_sessions if user else _all_users_sessions)(regular)
    for user in (False, True)
    for regular in (False, True)
}


_ACTIVE_USERS = {regular: _filtered_active_users(regular) for regular in (False, True)}


def _parameters(
    session: Session, query: PeriodQuery, periods: Periods, by_time: bool
) -> dict[str, Any]:
    lo, hi = periods.first_bucket, periods.end_bucket
    conn = session.connection()
    parameters: dict[str, Any]
    if periods.step:
        parameters = {"first": lo, "step": periods.step}
    else:
        parameters = dialects.of(conn).bind_bounds(conn, list(periods.bounds))
    parameters |= {
        "lo": bucket_start(lo) if by_time else lo,
        "hi": bucket_start(hi) if by_time else hi,
    }
    if query.user_id is not None:
        parameters["user_id"] = query.user_id
    if query.events:
        parameters["events"] = list(query.events)
    return parameters


def statement_for(
    session: Session, query: PeriodQuery, endpoint: str, periods: Periods
) -> tuple[Select[Any], dict[str, Any]]:
    """The statement and parameters that answer ``endpoint`` ("/metrics" or "/sessions")."""
    by_user, regular = query.user_id is not None, bool(periods.step)
    statement: Select[Any]
    if endpoint != "/metrics":
        statement = _SESSIONS[(by_user, regular)]
    elif by_user:
        statement = _USER_METRICS[(bool(query.events), regular)]
    else:
        cuts = sorted({quarter_of(bucket) for bucket in periods.bounds} | {0})
        statement = _all_users_metrics(bool(query.events), regular, tuple(cuts))
    return statement, _parameters(session, query, periods, by_user)


def metrics(session: Session, query: PeriodQuery) -> str:
    """The JSON text of /metrics's ``data``: per period in order, its label as ``date`` and then
    its counts, names in code-point order; periods without events left out unless fill=zero,
    which also lists every event name of the answer (or asked for) in each."""
    periods = query_periods(session, query)
    if periods is None:
        return "[]"
    rows = session.execute(*statement_for(session, query, "/metrics", periods)).all()
    label_of = periods.label_of_index
    if (
        dialects.of(session.connection()).orders_json_counts
        and not query.fill_zero
        and not periods.merges_runs
    ):
        # Each row's object is already the answer's text: only its label goes in front.
        labelled = (
            f'{{"date":{json.dumps(label)},{text[1:]}'
            for index, text in sorted(rows, key=lambda row: row[0])
            if (label := label_of[index]) is not None
        )
        return f"[{','.join(labelled)}]"
    # The rows' objects parsed as one JSON array: one call, not one per period.
    objects: list[dict[str, int]] = json.loads(f"[{','.join(text for _, text in rows)}]")
    counts: dict[str, dict[str, int]] = {}
    for (index, _), named in zip(rows, objects):
        label = label_of[index]
        if label is None:
            continue
        if label in counts:  # another run of the same period (an hour repeated)
            merged = counts[label]
            for event, n in named.items():
                merged[event] = merged.get(event, 0) + n
        else:
            counts[label] = named
    if query.fill_zero:
        names = sorted(set(query.events).union(*counts.values()))
        data = [
            {"date": label, **{name: counts.get(label, {}).get(name, 0) for name in names}}
            for label in periods.labels
        ]
    else:
        data = [
            {"date": label, **dict(sorted(counts[label].items()))}
            for label in periods.labels
            if label in counts
        ]
    return json.dumps(data, separators=(",", ":"))


def sessions(session: Session, query: PeriodQuery) -> list[tuple[str, int, int]]:
    """(label, sessions, total microseconds) per period of the plays, in order; periods
    without sessions left out unless fill=zero."""
    periods = query_periods(session, query)
    if periods is None:
        return []
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    label_of = periods.label_of_index
    for index, n, total in session.execute(
        *statement_for(session, query, "/sessions", periods)
    ).all():
        label = label_of[index]
        if label is not None:
            totals[label][0] += n
            totals[label][1] += total
    return [
        (label, totals[label][0], totals[label][1])
        for label in periods.labels
        if query.fill_zero or totals[label][0]
    ]


def active_users(session: Session, query: PeriodQuery) -> list[tuple[str, int]]:
    """(label, distinct users) per period in order; periods without users left out unless
    fill=zero."""
    if not query.events:
        _fold_logged_activity(session)
    periods = query_periods(session, query)
    if periods is None:
        return []
    if query.events:
        users = _filtered_active_users_per_label(session, query, periods)
    else:
        position = {label: i for i, label in enumerate(periods.labels)}
        tiles = [
            (span, bucket, position[label])
            for label, lo, hi in zip(periods.run_labels, periods.bounds, periods.bounds[1:])
            if label is not None
            for span, bucket in active_user_pieces(lo, hi)
        ]
        conn = session.connection()
        counted = dict(dialects.of(conn).count_users(conn, tiles)) if tiles else {}
        users = {label: counted.get(i, 0) for label, i in position.items()}
    return [(label, users[label]) for label in periods.labels if query.fill_zero or users[label]]


def _fold_logged_activity(session: Session) -> None:
    """Read-your-writes: the pairs writers logged since the last fold go into the bitmaps
    before they are read (docs/architecture.md, "Active users")."""
    if session.execute(select(_log.c.id).limit(1)).first() is not None:
        session.rollback()  # the read's snapshot must begin after the fold
        engine = session.get_bind()
        assert isinstance(engine, Engine)  # sessions of this app are bound to its engine
        writer.fold_activity(engine)


def _filtered_active_users_per_label(
    session: Session, query: PeriodQuery, periods: Periods
) -> dict[str, int]:
    statement = _ACTIVE_USERS[bool(periods.step)]
    users: dict[str, int] = Counter()
    label_of = periods.label_of_index
    for index, n in session.execute(statement, _parameters(session, query, periods, True)):
        if label_of[index] is not None:
            users[label_of[index]] = n
    # A period of several runs (a day whose midnight repeats) was counted run by run: count
    # it again as a whole, since a user may be in two of its runs.
    runs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for label, lo, hi in zip(periods.run_labels, periods.bounds, periods.bounds[1:]):
        if label is not None:
            runs[label].append((lo, hi))
    for label, spans in runs.items():
        if len(spans) > 1:
            during = or_(
                *(
                    (_events.c.occurred_at >= bucket_start(lo))
                    & (_events.c.occurred_at < bucket_start(hi))
                    for lo, hi in spans
                )
            )
            users[label] = session.execute(
                select(func.count(_events.c.user_id.distinct())).where(
                    during, _events.c.event.in_(query.events)
                )
            ).scalar_one()
    return users
