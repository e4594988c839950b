"""Pre-aggregated counts that answer /metrics and /sessions for all users without reading events.

Two tables, kept exact inside the very transaction that inserts or deletes events, so a query
never sees events without their aggregates or the reverse (read-your-writes, no staleness):

- ``event_counts(day, event, shard, n)``: events per UTC day and name;
- ``session_counts(day, shard, sessions, total_us)``: play/stop sessions per UTC day of the play,
  and the sum of their durations in microseconds.

A period (day, ISO week, month) is a union of whole UTC days, and so is a query's date range,
so summing the days answers every question exactly. ``shard`` spreads concurrent writers of the
same day and name over several rows, so that they rarely wait for each other's row locks on
PostgreSQL: each process writes the shard of its process id (a gunicorn worker serves one
request at a time, so workers seldom share one). Only the sum over shards means anything: a
purge may take an event out of another shard than the one that counted it.

Sessions change only around an event that arrives or leaves: a play forms a session exactly
when the user's next play-or-stop event (by timestamp, then id) is a stop. So for each user
whose play/stop events changed, the contiguous stretch of that user's sequence from the event
before the first change to the event after the last one is read, its sessions are paired
before and after the change, and the difference is applied. On PostgreSQL a transaction-level
advisory lock per user serialises this for concurrent writers of the same user (SQLite
serialises all writers anyway); the locks are taken in one global order, after the event rows
and counts and before the session rows, so two writers never wait for each other in a cycle.
"""
from __future__ import annotations

import os
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Iterable, Sequence

from sqlalchemy import String, bindparam, column, delete, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy import Connection

from analytics.models import (PLAY_OR_STOP, PLAY_OR_STOP_SQL, Event, EventCount,
                              SessionCount, UTCDateTime, is_play_or_stop)
from analytics.periods import (USER_BOUNDS_ROWS, microseconds_between, user_bounds_json,
                               utc_date)

SHARDS = 16

_events = Event.__table__
_event_counts = EventCount.__table__
_session_counts = SessionCount.__table__


@dataclass(frozen=True, order=True)
class Change:
    """The columns of an inserted or deleted event that the aggregates depend on."""

    occurred_at: datetime
    id: int
    event: str
    user_id: str


def record_changes(conn: Connection, added: Sequence[Change] = (),
                   removed: Sequence[Change] = ()) -> None:
    """Bring the aggregates up to date after ``added`` were inserted into and ``removed``
    deleted from events in the current transaction (both already applied to the table)."""
    if not added and not removed:
        return
    _apply_event_counts(conn, added, removed)
    _apply_session_changes(conn, added, removed)


# --- event_counts ----------------------------------------------------------------------------

def _apply_event_counts(conn: Connection, added, removed) -> None:
    deltas: Counter = Counter()
    shard = _shard()
    for change in added:
        deltas[(change.occurred_at.date(), change.event, shard)] += 1
    for change in removed:
        deltas[(change.occurred_at.date(), change.event, shard)] -= 1
    rows = [{"day": day, "event": event, "shard": shard, "n": n}
            for (day, event, shard), n in sorted(deltas.items()) if n]
    if rows:
        _upsert_adding(conn, _event_counts, rows, keys=("day", "event", "shard"),
                       totals=("n",))


# --- session_counts --------------------------------------------------------------------------

def _apply_session_changes(conn: Connection, added, removed) -> None:
    changed = [c for c in (*added, *removed) if c.event in PLAY_OR_STOP]
    if not changed:
        return
    by_user: dict[str, list[Change]] = defaultdict(list)
    for change in changed:
        by_user[change.user_id].append(change)
    _lock_users(conn, by_user)

    bounds = {user_id: (min(c.occurred_at for c in changes), max(c.occurred_at for c in changes))
              for user_id, changes in by_user.items()}
    stretches = (_read_stretch(conn, *next(iter(bounds.items()))) if len(bounds) == 1
                 else _read_stretches(conn, bounds))
    added_ids = {c.id for c in added}
    removed_by_user: dict[str, list[Change]] = defaultdict(list)
    for change in removed:
        if change.event in PLAY_OR_STOP:
            removed_by_user[change.user_id].append(change)

    deltas: dict[tuple[date, int], list[int]] = defaultdict(lambda: [0, 0])
    shard = _shard()
    for user_id in by_user:
        after = stretches.get(user_id, [])
        before = sorted([c for c in after if c.id not in added_ids] + removed_by_user[user_id])
        for sign, sequence in ((-1, before), (1, after)):
            for play, stop in paired(sequence):
                key = (play.occurred_at.date(), shard)
                deltas[key][0] += sign
                deltas[key][1] += sign * _microseconds(play.occurred_at, stop.occurred_at)
    rows = [{"day": day, "shard": shard, "sessions": n, "total_us": total}
            for (day, shard), (n, total) in sorted(deltas.items()) if n or total]
    if rows:
        _upsert_adding(conn, _session_counts, rows, keys=("day", "shard"),
                       totals=("sessions", "total_us"))


def _shard() -> int:
    return os.getpid() % SHARDS


def paired(sequence: Sequence[Change]) -> Iterable[tuple[Change, Change]]:
    """The (play, stop) sessions of a user's play/stop events sorted by (timestamp, id)."""
    for current, following in zip(sequence, sequence[1:]):
        if current.event == "play" and following.event == "stop":
            yield current, following


def _microseconds(start: datetime, end: datetime) -> int:
    delta = end - start
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_LOCK_ONE = select(func.pg_advisory_xact_lock(bindparam("lock_key", type_=postgresql.BIGINT)))


_LOCK_MANY = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")


def _lock_users(conn: Connection, by_user: dict) -> None:
    if conn.dialect.name != "postgresql":
        return  # SQLite: the write transaction already excludes every other writer
    keys = sorted({zlib.crc32(user_id.encode("utf-8")) for user_id in by_user})
    if len(keys) == 1:  # every POST /track: one prepared statement
        conn.execute(_LOCK_ONE, {"lock_key": keys[0]})
    else:  # in ascending order, the one global order of these locks
        conn.execute(_LOCK_MANY, {"keys": keys})


def _many_users_statements(dialect: str):
    rows = USER_BOUNDS_ROWS[dialect]
    widen = text(
        f"WITH b AS ({rows}) SELECT b.user_id, b.lo, b.hi, "
        f"(SELECT max(p.occurred_at) FROM events p WHERE p.user_id = b.user_id "
        f" AND p.{PLAY_OR_STOP_SQL} AND p.occurred_at < b.lo) AS before_lo, "
        f"(SELECT min(p.occurred_at) FROM events p WHERE p.user_id = b.user_id "
        f" AND p.{PLAY_OR_STOP_SQL} AND p.occurred_at > b.hi) AS after_hi FROM b"
    ).columns(column("user_id", String), column("lo", UTCDateTime()),
              column("hi", UTCDateTime()), column("before_lo", UTCDateTime()),
              column("after_hi", UTCDateTime()))
    stretch = text(
        f"WITH b AS ({rows}) SELECT e.occurred_at, e.id, e.event, e.user_id FROM events e "
        f"JOIN b ON e.user_id = b.user_id WHERE e.{PLAY_OR_STOP_SQL} "
        f"AND e.occurred_at >= b.lo AND e.occurred_at <= b.hi"
    ).columns(column("occurred_at", UTCDateTime()), column("id"), column("event", String),
              column("user_id", String))
    return widen, stretch


_MANY_USERS = {dialect: _many_users_statements(dialect) for dialect in USER_BOUNDS_ROWS}


def _read_stretches(conn: Connection, bounds: dict[str, tuple[datetime, datetime]]
                    ) -> dict[str, list[Change]]:
    """For each user, the play/stop events from the last one before ``lo`` to the first one
    after ``hi`` (all of them at those two timestamps), sorted by (timestamp, id).

    Two statements: the widened bounds first (two index probes per user), then one range scan
    per user; a single statement let PostgreSQL re-evaluate the probes for every event read.
    """
    dialect = conn.dialect.name
    widen, stretch = _MANY_USERS[dialect]
    widened = {
        user_id: (before_lo or lo, after_hi or hi)
        for user_id, lo, hi, before_lo, after_hi
        in conn.execute(widen, {"bounds": user_bounds_json(dialect, bounds)})}
    stretches: dict[str, list[Change]] = defaultdict(list)
    for occurred_at, id_, event, user_id in conn.execute(
            stretch, {"bounds": user_bounds_json(dialect, widened)}):
        stretches[user_id].append(Change(occurred_at.astimezone(timezone.utc), id_, event,
                                         user_id))
    for sequence in stretches.values():
        sequence.sort()
    return stretches


def _one_user_stretch_statement():
    p = _events.alias("p")
    user_id = bindparam("user_id", type_=String)
    lo, hi = bindparam("lo", type_=UTCDateTime()), bindparam("hi", type_=UTCDateTime())
    mine = (p.c.user_id == user_id, is_play_or_stop(p))
    # Uncorrelated scalar subqueries: evaluated once, one index probe each.
    before = select(func.max(p.c.occurred_at)).where(*mine, p.c.occurred_at < lo).scalar_subquery()
    after = select(func.min(p.c.occurred_at)).where(*mine, p.c.occurred_at > hi).scalar_subquery()
    e = _events
    return (select(e.c.occurred_at, e.c.id, e.c.event, e.c.user_id)
            .where(e.c.user_id == user_id, is_play_or_stop(e),
                   e.c.occurred_at >= func.coalesce(before, lo),
                   e.c.occurred_at <= func.coalesce(after, hi)))


_ONE_USER_STRETCH = _one_user_stretch_statement()


def _read_stretch(conn: Connection, user_id: str, bounds: tuple[datetime, datetime]
                  ) -> dict[str, list[Change]]:
    """_read_stretches for one user (every POST /track): one prepared statement."""
    lo, hi = bounds
    sequence = sorted(Change(occurred_at.astimezone(timezone.utc), id_, event, user)
                      for occurred_at, id_, event, user
                      in conn.execute(_ONE_USER_STRETCH, {"user_id": user_id, "lo": lo, "hi": hi}))
    return {user_id: sequence}


# --- writing and rebuilding -------------------------------------------------------------------

# Statements on the ingest path are built once per database and table: building them costs
# more than running them.
_UPSERTS: dict = {}


def _upsert_adding(conn: Connection, table, rows: list[dict], keys: tuple, totals: tuple):
    """INSERT rows, or add their totals to the rows already there, in key order (so that
    concurrent writers lock rows in the same order and never deadlock)."""
    dialect = conn.dialect.name
    statement = _UPSERTS.get((dialect, table.name))
    if statement is None:
        make_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = make_insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=list(keys),
            set_={name: table.c[name] + statement.excluded[name] for name in totals},
        )
        _UPSERTS[(dialect, table.name)] = statement
    conn.execute(statement, rows)


def rebuild(conn: Connection) -> None:
    """Recompute both tables from the events (after a restore or a manual change of events)."""
    conn.execute(delete(_event_counts))
    conn.execute(delete(_session_counts))
    e = _events
    day = utc_date(e.c.occurred_at)
    shard = e.c.id % SHARDS
    conn.execute(insert(_event_counts).from_select(
        ["day", "event", "shard", "n"],
        select(day, e.c.event, shard, func.count()).group_by(day, e.c.event, shard)))

    in_order = dict(partition_by=e.c.user_id, order_by=(e.c.occurred_at, e.c.id))
    sequence = (select(e.c.id, e.c.event, e.c.occurred_at,
                       func.lead(e.c.event).over(**in_order).label("next_event"),
                       func.lead(e.c.occurred_at).over(**in_order).label("next_at"))
                .where(is_play_or_stop(e))
                .subquery("sequence"))
    plays = (select(sequence.c.id, sequence.c.occurred_at.label("play_at"),
                    sequence.c.next_at.label("stop_at"))
             .where(sequence.c.event == "play", sequence.c.next_event == "stop")
             .subquery("plays"))
    play_day, play_shard = utc_date(plays.c.play_at), plays.c.id % SHARDS
    conn.execute(insert(_session_counts).from_select(
        ["day", "shard", "sessions", "total_us"],
        select(play_day, play_shard, func.count(),
               func.sum(microseconds_between(plays.c.play_at, plays.c.stop_at)))
        .group_by(play_day, play_shard)))
