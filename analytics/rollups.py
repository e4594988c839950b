"""Pre-aggregated counts that answer /metrics and /sessions for all users without reading events.

Two tables, kept exact inside the very transaction that inserts or deletes events, so a query
never sees events without their aggregates or the reverse (read-your-writes, no staleness):

- ``event_counts(day, event, shard, n)``: events per UTC day and name;
- ``session_counts(day, shard, sessions, total_us)``: play/stop sessions per UTC day of the play,
  and the sum of their durations in microseconds.

A period (day, ISO week, month) is a union of whole UTC days, and so is a query's date range,
so summing the days answers every question exactly. ``shard`` spreads concurrent writers of the
same day and name over several rows, so that they rarely wait for each other's row locks on
PostgreSQL: each thread writes the shard of its system-wide thread id (a gunicorn worker's
single events all go through its one writer thread, see committer.py; an import writes with
two threads), so concurrent writers seldom share a shard. Only the sum over shards means
anything: a purge may take an event out of another shard than the one that counted it.

Sessions change only around an event that arrives or leaves: a play forms a session exactly
when the user's next play-or-stop event (by timestamp, then id) is a stop. So only the pairs
next to a changed event can change. For each changed play/stop event, the user's play/stop
events just before and just after it in the table are looked up (two index probes); changed
events with no unchanged event between them form a run, and each run's sessions are paired
between its two unchanged neighbours before and after the change, and the difference is
applied. The cost is two probes per changed event, whatever the user's history looks like.
Inserts (every ingest path) do all of this in one statement in the database, with a third
probe per run; deletes (the purge) pair the runs here in Python. On
PostgreSQL a transaction-level advisory lock per user serialises this for concurrent writers of
the same user (SQLite serialises all writers anyway); the locks are taken in one global order,
after the event rows and counts and before the session rows, so two writers never wait for
each other in a cycle.
"""
from __future__ import annotations

import json
import threading
import zlib
from collections import Counter, defaultdict
from datetime import date, datetime
from typing import Iterable, NamedTuple, Sequence

from sqlalchemy import String, bindparam, column, delete, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy import Connection

from analytics.models import (PLAY_OR_STOP, PLAY_OR_STOP_SQL, Event, EventCount,
                              SessionCount, UTCDateTime, is_play_or_stop)
from analytics.periods import EVENT_KEY_ROWS, event_keys_json, microseconds_between, utc_date

SHARDS = 16

_events = Event.__table__
_event_counts = EventCount.__table__
_session_counts = SessionCount.__table__


class Change(NamedTuple):
    """The columns of an inserted or deleted event that the aggregates depend on, in the order
    that sorts a user's events as sessions pair them (timestamp, then id). occurred_at is an
    aware UTC datetime."""

    occurred_at: datetime
    id: int
    event: str
    user_id: str


def record_changes(conn: Connection, added: Sequence[Change] = (),
                   removed: Sequence[Change] = (), *, counted: bool = False) -> None:
    """Bring the aggregates up to date after ``added`` were inserted into and ``removed``
    deleted from events in the current transaction (both already applied to the table).

    ``counted``: the statement that inserted ``added`` also added them to event_counts
    (COUNT_INSERTED_POSTGRESQL).
    """
    if not added and not removed:
        return
    _apply_event_counts(conn, () if counted else added, removed)
    _apply_session_changes(conn, added, removed)


# event_counts += the rows of ``source`` (a CTE of inserted rows with occurred_at and event),
# in key order like _upsert_adding; %(shard)s is shard_of_writer().
COUNT_INSERTED_POSTGRESQL = """
    INSERT INTO event_counts (day, event, shard, n)
    SELECT {day} AS day, event, %(shard)s, count(*) FROM {{source}}
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (day, event, shard) DO UPDATE SET n = event_counts.n + excluded.n
""".format(day=utc_date(column("occurred_at")).compile(dialect=postgresql.dialect()))


# --- event_counts ----------------------------------------------------------------------------

def _apply_event_counts(conn: Connection, added, removed) -> None:
    deltas: Counter = Counter()
    shard = shard_of_writer()
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
    _lock_users(conn, {c.user_id for c in changed})
    if not removed:  # the ingest paths: the whole difference is worked out in the database
        ids = [c.id for c in changed]
        if conn.dialect.name == "postgresql":
            _execute_binary(conn, _SESSION_ADDITIONS["postgresql"], {
                "ids": ids, "users": [c.user_id for c in changed],
                "times": [c.occurred_at for c in changed], "events": [c.event for c in changed],
                "shard": shard_of_writer()})
        else:  # SQLite looks the rows up by rowid
            conn.execute(_SESSION_ADDITIONS["sqlite"],
                         {"ids": json.dumps(ids), "shard": shard_of_writer()})
        return
    changed.sort()  # (a run's events are collected in order below)
    neighbours = _read_neighbours(conn, changed)
    changed_ids = {c.id for c in changed}

    def unchanged_neighbour(change: Change, side: int) -> Change | None:
        # The table holds the added events but not the removed ones, so a neighbour found
        # there is either unchanged or added; step over added ones (they have their own probes).
        while True:
            change = neighbours[change.id][side]
            if change is None or change.id not in changed_ids:
                return change

    added_ids = {c.id for c in added}
    runs: dict[tuple, tuple[list[Change], list[Change]]] = defaultdict(lambda: ([], []))
    for change in changed:  # changed events between the same two unchanged ones: one run
        run = runs[(change.user_id, unchanged_neighbour(change, 0), unchanged_neighbour(change, 1))]
        run[change.id in added_ids].append(change)

    deltas: dict[tuple[date, int], list[int]] = defaultdict(lambda: [0, 0])
    shard = shard_of_writer()
    for (_, before, after), (gone, new) in runs.items():
        ends = [c for c in (before, after) if c is not None]
        for sign, inside in ((-1, gone), (1, new)):
            for play, stop in paired(sorted([*ends, *inside])):
                key = (play.occurred_at.date(), shard)
                deltas[key][0] += sign
                deltas[key][1] += sign * _microseconds(play.occurred_at, stop.occurred_at)
    rows = [{"day": day, "shard": shard, "sessions": n, "total_us": total}
            for (day, shard), (n, total) in sorted(deltas.items()) if n or total]
    if rows:
        _upsert_adding(conn, _session_counts, rows, keys=("day", "shard"),
                       totals=("sessions", "total_us"))


def shard_of_writer() -> int:
    """The shard this thread writes its counts to: by its system-wide thread id, so that the
    writer threads of one process (an import's two writers, gunicorn's request threads) and of
    different processes seldom share one."""
    return threading.get_native_id() % SHARDS


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


def _execute_binary(conn: Connection, statement, parameters: dict) -> None:
    """Execute a PostgreSQL ``text()`` statement with its list parameters sent as binary
    arrays: psycopg builds those in C, at a fifth of the cost of array literals in text."""
    sql = _BINARY_SQL.get(statement)
    if sql is None:
        sql = str(statement.compile(dialect=conn.dialect))
        for name, value in parameters.items():
            if isinstance(value, list):
                sql = sql.replace(f"%({name})s", f"%({name})b")
        _BINARY_SQL[statement] = sql
    conn.exec_driver_sql(sql, parameters)


_BINARY_SQL: dict = {}


def _lock_users(conn: Connection, users: set[str]) -> None:
    if conn.dialect.name != "postgresql":
        return  # SQLite: the write transaction already excludes every other writer
    keys = sorted({zlib.crc32(user_id.encode("utf-8")) for user_id in users})
    if len(keys) == 1:  # every POST /track: one prepared statement
        conn.execute(_LOCK_ONE, {"lock_key": keys[0]})
    else:  # in ascending order, the one global order of these locks
        _execute_binary(conn, _LOCK_MANY, {"keys": keys})


def _neighbours_statement(dialect: str):
    """For each (user_id, occurred_at, id) key, the user's play/stop events just before and
    just after it by (occurred_at, id): two index probes on ix_events_play_stop each."""
    def probe(columns: str, compare: str, order: str) -> str:
        return (f"SELECT {columns} FROM events e WHERE e.user_id = k.user_id "
                f"AND e.{PLAY_OR_STOP_SQL} AND (e.occurred_at, e.id) {compare} (k.occurred_at, k.id) "
                f"ORDER BY e.occurred_at {order}, e.id {order} LIMIT 1")
    if dialect == "postgresql":
        row = "e.occurred_at, e.id, e.event"
        joins = (f"LEFT JOIN LATERAL ({probe(row, '<', 'DESC')}) b ON true "
                 f"LEFT JOIN LATERAL ({probe(row, '>', 'ASC')}) a ON true")
    else:  # no LATERAL: find each neighbour's id, then its row
        joins = (f"LEFT JOIN events b ON b.id = ({probe('e.id', '<', 'DESC')}) "
                 f"LEFT JOIN events a ON a.id = ({probe('e.id', '>', 'ASC')})")
    times = UTCDateTime()
    return text(
        f"WITH k AS ({EVENT_KEY_ROWS[dialect]}) SELECT k.id, b.occurred_at, b.id, b.event, "
        f"a.occurred_at, a.id, a.event FROM k {joins}"
    ).columns(column("key_id"), column("before_at", times), column("before_id"),
              column("before_event", String), column("after_at", times), column("after_id"),
              column("after_event", String))


_NEIGHBOURS = {dialect: _neighbours_statement(dialect) for dialect in EVENT_KEY_ROWS}


def _session_additions_statement(dialect: str):
    """The sessions that the play/stop events with ids :ids (all just inserted) make and break,
    added to session_counts as one difference per day (shard :shard).

    The same reasoning as the Python path below, in one statement. Each added event c makes the
    pair (c, its successor), and, when its predecessor b is not itself added (c starts a run of
    added events), the pair (b, c). Such a run also breaks the pair that b formed with the first
    event after the run that is not added (u, a third probe, made only where b is a play). Only
    pairs of a play and then a stop count.
    """
    if dialect == "postgresql":
        changed = "CAST(:ids AS bigint[])"
        is_added = f"{{0}} = ANY({changed})"
    else:
        is_added = "{0} IN (SELECT value FROM json_each(:ids))"

    def probe(columns: str, compare: str, order: str, skip_added: bool = False,
              only_if: str = "") -> str:
        skip = f"AND NOT ({is_added.format('e.id')}) " if skip_added else ""
        return (f"SELECT {columns} FROM events e WHERE {only_if}e.user_id = c.user_id "
                f"AND e.{PLAY_OR_STOP_SQL} AND (e.occurred_at, e.id) {compare} "
                f"(c.occurred_at, c.id) {skip}ORDER BY e.occurred_at {order}, e.id {order} LIMIT 1")

    run_start = f"b.id IS NOT NULL AND NOT ({is_added.format('b.id')})"
    only_if = f"{run_start} AND b.event = 'play' AND "
    if dialect == "postgresql":
        row = "e.id, e.event, e.occurred_at"
        joins = (f"LEFT JOIN LATERAL ({probe(row, '<', 'DESC')}) b ON true "
                 f"LEFT JOIN LATERAL ({probe(row, '>', 'ASC')}) a ON true "
                 # (the condition inside, so that the probe is not even started without it)
                 f"LEFT JOIN LATERAL ({probe(row, '>', 'ASC', skip_added=True, only_if=only_if)})"
                 f" u ON true")
        # The added events' own columns come as arrays: looking them up by id could be planned
        # as a scan of the table.
        added = ("SELECT * FROM unnest(CAST(:users AS varchar[]), CAST(:times AS timestamptz[]), "
                 f"{changed}, CAST(:events AS varchar[])) AS c(user_id, occurred_at, id, event)")
    else:  # no LATERAL: each neighbour's id, then its row
        joins = (f"LEFT JOIN events b ON b.id = ({probe('e.id', '<', 'DESC')}) "
                 f"LEFT JOIN events a ON a.id = ({probe('e.id', '>', 'ASC')}) "
                 f"LEFT JOIN events u ON {run_start} AND b.event = 'play' "
                 f"AND u.id = ({probe('e.id', '>', 'ASC', skip_added=True)})")
        added = ("SELECT id, user_id, occurred_at, event FROM events "
                 "WHERE id IN (SELECT value FROM json_each(:ids))")
    play, stop = column("play_at"), column("stop_at")
    length = microseconds_between(play, stop).compile(dialect=_DIALECTS[dialect])
    play_day = utc_date(play).compile(dialect=_DIALECTS[dialect])
    return text(f"""
        WITH c AS ({added}),
        n AS (
            SELECT c.event, c.occurred_at, b.event AS b_event, b.occurred_at AS b_at,
                   a.event AS a_event, a.occurred_at AS a_at, u.event AS u_event,
                   u.occurred_at AS u_at, {run_start} AS run_start
            FROM c {joins}
        ),
        pairs AS (
            SELECT occurred_at AS play_at, a_at AS stop_at, 1 AS sign FROM n
            WHERE event = 'play' AND a_event = 'stop'
            UNION ALL
            SELECT b_at, occurred_at, 1 FROM n
            WHERE run_start AND b_event = 'play' AND event = 'stop'
            UNION ALL
            SELECT b_at, u_at, -1 FROM n
            WHERE run_start AND b_event = 'play' AND u_event = 'stop'
        )
        INSERT INTO session_counts (day, shard, sessions, total_us)
        SELECT {play_day}, :shard, sum(sign), sum(sign * {length}) FROM pairs WHERE true
        GROUP BY 1 HAVING sum(sign) <> 0 OR sum(sign * {length}) <> 0 ORDER BY 1
        ON CONFLICT (day, shard) DO UPDATE SET
            sessions = session_counts.sessions + excluded.sessions,
            total_us = session_counts.total_us + excluded.total_us
    """)


_DIALECTS = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}
_SESSION_ADDITIONS = {dialect: _session_additions_statement(dialect) for dialect in EVENT_KEY_ROWS}


def _read_neighbours(conn: Connection, changed: Sequence[Change]
                     ) -> dict[int, tuple[Change | None, Change | None]]:
    """For each changed event's id, the user's play/stop events just before and just after it
    (by timestamp, then id) among those in the table now."""
    dialect = conn.dialect.name
    keys = event_keys_json(dialect, ((c.user_id, c.occurred_at, c.id) for c in changed))
    user_of = {c.id: c.user_id for c in changed}
    neighbours = {}
    for key_id, *sides in conn.execute(_NEIGHBOURS[dialect], {"keys": keys}):
        found = []
        for at, id_, event in (sides[:3], sides[3:]):
            # (UTCDateTime already gives aware UTC datetimes)
            found.append(None if id_ is None else Change(at, id_, event, user_of[key_id]))
        neighbours[key_id] = tuple(found)
    return neighbours


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
        statement = _UPSERTS[(dialect, table.name)] = _upsert_statement(conn, table, keys, totals)
    if dialect == "postgresql":
        conn.execute(statement, {"rows": json.dumps(rows, default=date.isoformat)})
    else:
        conn.execute(statement, rows)


def _upsert_statement(conn: Connection, table, keys: tuple, totals: tuple):
    if conn.dialect.name != "postgresql":  # SQLite's executemany steps the statement in C
        statement = sqlite.insert(table)
        return statement.on_conflict_do_update(
            index_elements=list(keys),
            set_={name: table.c[name] + statement.excluded[name] for name in totals})
    # PostgreSQL: all rows in one statement, read from one JSON parameter, rather than one
    # execution per row.
    names = [*keys, *totals]
    record = ", ".join(f"{name} {table.c[name].type.compile(conn.dialect)}" for name in names)
    listed = ", ".join(names)
    added = ", ".join(f"{name} = {table.name}.{name} + excluded.{name}" for name in totals)
    return text(
        f"INSERT INTO {table.name} ({listed}) SELECT {listed} "
        f"FROM json_to_recordset(CAST(:rows AS json)) AS r({record}) "
        f"ORDER BY {', '.join(keys)} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {added}")


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
