"""Database statements as plain functions of a session: no Flask, and no commit."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import Select, String, bindparam, cast, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from analytics import rollups
from analytics.db import hold_writer_turn
from analytics.models import (PLAY_OR_STOP, Event, EventCount, SessionCount, is_play_or_stop,
                              sqlite_timestamp)
from analytics.periods import microseconds_between, period_label, utc_date

_events = Event.__table__


# PostgreSQL: COPY cannot skip conflicts, so the batch is COPYed into a temporary staging table
# (per connection, emptied at every commit) and moved into events by one INSERT ... SELECT ...
# ON CONFLICT DO NOTHING. COPY is the driver's fast path: a multi-row VALUES list costs more in
# the driver (building, escaping, parsing SQL) than the insert costs in the server, and one
# binary array per column measured the same as the staging table. The ids are taken from the sequence first, in batch order, so that the rows
# that went in are known by id alone (no row is sent back) and ties between equal timestamps
# are broken in batch order when sessions are paired. The same statement adds the new events
# to the daily counts (rollups.py), so those cost no round trip and no Python per event.
_PG_STAGING = """
    CREATE TEMPORARY TABLE IF NOT EXISTS incoming_events (
        id bigint, event varchar, user_id varchar, occurred_at timestamptz,
        received_at timestamptz, metadata text, event_id varchar
    ) ON COMMIT DELETE ROWS
"""
# Whether this connection already has its staging table (it is created once per connection,
# but goes away again if the transaction that created it is rolled back), and the ids: the
# sequence steps by a block of ids (migration 0005), so one nextval() reserves a whole block.
_PG_IDS = """
    SELECT to_regclass('pg_temp.incoming_events') IS NOT NULL, seqincrement,
           ARRAY(SELECT nextval(seqrelid::regclass)
                 FROM generate_series(1, (%(n)s + seqincrement - 1) / seqincrement))
    FROM pg_sequence WHERE seqrelid = CAST(pg_get_serial_sequence('events', 'id') AS regclass)
"""
# Binary COPY: psycopg writes each row in C (the text format costs six times as much per row
# in Python), and the server has no text to parse.
_PG_COPY = ("COPY incoming_events (id, event, user_id, occurred_at, received_at, metadata, "
            "event_id) FROM STDIN (FORMAT BINARY)")
_PG_COPY_TYPES = ("int8", "varchar", "varchar", "timestamptz", "timestamptz", "text", "varchar")
# Rows staged by an earlier call in the same transaction have smaller ids: "id >= first"
# leaves them out, which is cheaper than emptying the table each time.
_PG_MOVE = f"""
    WITH inserted AS (
        INSERT INTO events (id, event, user_id, occurred_at, received_at, metadata, event_id)
        SELECT id, event, user_id, occurred_at, received_at, CAST(metadata AS jsonb), event_id
        FROM incoming_events WHERE id >= %(first)s
        ON CONFLICT (user_id, event_id) DO NOTHING
        RETURNING id, occurred_at, event
    ), counted AS ({rollups.COUNT_INSERTED_POSTGRESQL.format(source="inserted")})
    SELECT CASE WHEN count(*) < %(n)s THEN COALESCE(array_agg(id), '{{}}') END FROM inserted
"""


def _insert_postgresql(session: Session, rows: list[dict]) -> tuple[list, bool]:
    connection = session.connection()
    driver = connection.connection.driver_connection
    staged, step, blocks = connection.exec_driver_sql(_PG_IDS, {"n": len(rows)}).one()
    if not staged:
        connection.exec_driver_sql(_PG_STAGING)
    # In ascending order, given to the rows in batch order: ties between equal timestamps are
    # broken by arrival.
    ids = [first + offset for first in sorted(blocks) for offset in range(step)][:len(rows)]
    cursor = driver.cursor()
    try:
        with cursor.copy(_PG_COPY) as copy:
            copy.set_types(_PG_COPY_TYPES)
            for id_, row in zip(ids, rows):
                copy.write_row((id_, row["event"], row["user_id"], row["occurred_at"],
                                row["received_at"], row["metadata_json"], row["event_id"]))
    except connection.dialect.loaded_dbapi.Error as exc:
        # Present the driver's error as SQLAlchemy's, so that callers tell an unreachable
        # database from a failing one the same way as for every other statement.
        raise DBAPIError.instance(_PG_COPY, None, exc, connection.dialect.loaded_dbapi.Error,
                                  connection_invalidated=bool(cursor.connection.closed),
                                  dialect=connection.dialect) from None
    finally:
        cursor.close()
    some = connection.exec_driver_sql(
        _PG_MOVE, {"first": ids[0], "n": len(rows), "shard": rollups.shard_of_writer()}).scalar()
    if some is not None:  # some rows were duplicates: the ids of the others (maybe none)
        went_in = set(some)
        ids = [id_ if id_ in went_in else None for id_ in ids]
    return ids, True


_COLUMNS = ("event", "user_id", "occurred_at", "received_at", "metadata", "event_id")
_SQLITE_INSERT = (f"INSERT INTO events ({', '.join(_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(_COLUMNS))}) "
                  f"ON CONFLICT (user_id, event_id) DO NOTHING")


def _insert_sqlite(session: Session, rows: list[dict]) -> tuple[list, bool]:
    connection = session.connection()
    stamps: dict[datetime, str] = {}  # received_at is most often one value for the whole batch
    values = []
    for row in rows:
        received = row["received_at"]
        if received not in stamps:
            stamps[received] = sqlite_timestamp(received)
        values.append((row["event"], row["user_id"], sqlite_timestamp(row["occurred_at"]),
                       stamps[received], row["metadata_json"], row["event_id"]))
    # The driver's executemany: one prepared statement stepped in C for every row. RETURNING
    # cannot be used with it, so the rows that went in are found by rowid instead: this
    # transaction holds SQLite's write lock from its first insert to its commit, and each new
    # row gets the next rowid after the largest, so the rows inserted here are exactly the
    # last ``inserted`` rowids, in the order of ``rows``.
    driver = connection.connection.driver_connection
    hold_writer_turn(session)
    before = driver.total_changes
    connection.exec_driver_sql(_SQLITE_INSERT, values)
    inserted = driver.total_changes - before
    if not inserted:
        return [None] * len(rows), False
    last = connection.exec_driver_sql("SELECT max(id) FROM events").scalar()
    if inserted == len(rows):
        return list(range(last - inserted + 1, last + 1)), False
    # Some were duplicates (never a row without event_id): walk both in insertion order.
    went_in = connection.exec_driver_sql(
        "SELECT id, user_id, event_id FROM events WHERE id > ? ORDER BY id",
        (last - inserted,)).all()
    ids: list[int | None] = []
    following = iter(went_in)
    next_row = next(following, None)
    for row in rows:
        if next_row is not None and (next_row[1], next_row[2]) == (row["user_id"], row["event_id"]):
            ids.append(next_row[0])
            next_row = next(following, None)
        else:
            ids.append(None)
    return ids, False


# Below this many rows the bulk paths' fixed costs (staging table, extra statements) outweigh
# what they save per row: a single INSERT ... VALUES ... RETURNING is quicker (POST /track).
_FEW_ROWS = 20


_FEW_INSERTS: dict = {}


def _insert_few(session: Session, rows: list[dict]) -> tuple[list, bool]:
    dialect = session.get_bind().dialect
    statement = _FEW_INSERTS.get(dialect.name)
    if statement is None:  # built once: building it costs more than running it
        metadata = bindparam("metadata_json", type_=String)
        if dialect.name == "postgresql":
            metadata = cast(metadata, postgresql.JSONB)
        statement = _FEW_INSERTS[dialect.name] = (
            _DIALECT_INSERTS[dialect.name](_events)
            .values(metadata=metadata)
            .on_conflict_do_nothing(index_elements=["user_id", "event_id"])
            .returning(_events.c.id, _events.c.user_id, _events.c.event_id,
                       _events.c.occurred_at, _events.c.event))
    hold_writer_turn(session)
    returned = session.connection().execute(statement, rows).all()
    # Rows with an event_id are told apart by it. The others all went in; each is given the id
    # of a returned row with its own user, time and name (the smallest first), so whatever the
    # order the database numbered them in, every id goes with the values stored under it.
    by_key: dict[tuple, list[int]] = {}
    for id_, user_id, event_id, occurred_at, event in sorted(returned, reverse=True):
        key = (user_id, event_id) if event_id is not None else (user_id, occurred_at, event)
        by_key.setdefault(key, []).append(id_)
    ids = []
    for row in rows:
        key = ((row["user_id"], row["event_id"]) if row["event_id"] is not None
               else (row["user_id"], row["occurred_at"], row["event"]))
        found = by_key.get(key)
        ids.append(found.pop() if found else None)
    return ids, False


# The only place that knows how each database skips duplicates.
_DIALECT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_INSERTERS = {"postgresql": _insert_postgresql, "sqlite": _insert_sqlite}


def insert_events(session: Session, rows: list[dict]) -> list[bool]:
    """Insert prepared event rows (see ingest.prepare_event: aware UTC times, metadata as JSON
    text) through the driver's bulk path.

    Returns, for each row, whether it was stored. A row is not stored when another with the same
    user_id and event_id is already in the table (committed, or inserted by a concurrent
    transaction that then commits) or comes earlier in ``rows``. The unique constraint decides,
    with INSERT ... ON CONFLICT DO NOTHING, so concurrent retries of one event store it once.
    Rows without event_id are always stored. The pre-aggregated counts (rollups.py) are
    brought up to date in the same transaction. On SQLite it takes the writer turn
    (``db.hold_writer_turn``) for the rest of the transaction: call it through
    ``bulk.commit_events``, which gives the turn back after the commit.
    """
    dialect = session.get_bind().dialect.name
    if dialect not in _INSERTERS:
        raise NotImplementedError(f"storing events is not implemented for {dialect}")
    stored = [True] * len(rows)
    keys: set[tuple[str, str]] = set()
    positions: list[int] = []
    for position, row in enumerate(rows):
        if row["event_id"] is not None:
            key = (row["user_id"], row["event_id"])
            if key in keys:  # a repeat inside this batch: the first one wins
                stored[position] = False
                continue
            keys.add(key)
        positions.append(position)
    if not positions:
        return stored
    todo = [rows[position] for position in positions]
    inserter = _insert_few if len(todo) < _FEW_ROWS else _INSERTERS[dialect]
    ids, counted = inserter(session, todo)
    added = []
    Change = rollups.Change
    for position, row, id_ in zip(positions, todo, ids):
        if id_ is None:
            stored[position] = False
        elif not counted or row["event"] in PLAY_OR_STOP:  # counted: only sessions are left
            added.append(Change(row["occurred_at"], id_, row["event"], row["user_id"]))
    rollups.record_changes(session.connection(), added=added, counted=counted)
    return stored


def ping(session: Session) -> None:
    """Raise if the database does not answer."""
    session.execute(text("SELECT 1"))


# --- GET /metrics and GET /sessions -----------------------------------------------------------

def utc_bounds(start: date, end: date) -> tuple[datetime, datetime | None]:
    """The half-open UTC interval [start 00:00, end + 1 day 00:00) of inclusive dates.

    The upper bound is None (unbounded) when end is the last representable date.
    """
    start_at = datetime.combine(start, time.min, tzinfo=timezone.utc)
    if end == date.max:
        return start_at, None
    return start_at, datetime.combine(end + timedelta(days=1), time.min, tzinfo=timezone.utc)


def _in_range(column, start_at: datetime, end_at: datetime | None) -> list[ColumnElement[bool]]:
    conditions = [column >= start_at]
    if end_at is not None:
        conditions.append(column < end_at)
    return conditions


def metrics_statement(start: date, end: date, group_by: str = "day",
                      user_id: str | None = None) -> Select:
    """Rows (date, event, count) of the events in the inclusive UTC date range, per period
    label and event name, in ascending date order."""
    start_at, end_at = utc_bounds(start, end)
    day = utc_date(_events.c.occurred_at)
    # Counting per day first keeps the per-event work to a cheap grouping key; the periods are
    # labelled from the (few) daily counts. Without an ORDER BY here PostgreSQL hashes the
    # groups instead of sorting every event.
    daily = (
        select(day.label("day"), _events.c.event, func.count().label("count"))
        .where(*_in_range(_events.c.occurred_at, start_at, end_at))
        .group_by(day, _events.c.event)
    )
    if user_id is not None:
        daily = daily.where(_events.c.user_id == user_id)
    daily = daily.subquery("daily")
    label = period_label(daily.c.day, group_by)
    return (
        select(label.label("date"), daily.c.event, func.sum(daily.c.count).label("count"))
        .group_by(label, daily.c.event)
        .order_by(label)
    )


def metrics_rollup_statement(start: date, end: date, group_by: str = "day") -> Select:
    """metrics_statement for all users, read from the daily counts kept by rollups.py:
    a few rows per day whatever the number of events."""
    counts = EventCount.__table__
    label = period_label(counts.c.day, group_by)
    total = func.sum(counts.c.n)
    return (
        select(label.label("date"), counts.c.event, total.label("count"))
        .where(counts.c.day >= start, counts.c.day <= end)
        .group_by(label, counts.c.event)
        .having(total > 0)  # a day whose events were all purged keeps rows of 0
        .order_by(label)
    )


def metrics(session: Session, start: date, end: date, group_by: str = "day",
            user_id: str | None = None) -> list[tuple[str, str, int]]:
    """(date, event, count) per period and event name.

    One user's events are few and counted from the events (ix_events_user_id_occurred_at);
    all users' are summed from the daily counts.
    """
    statement = (metrics_rollup_statement(start, end, group_by) if user_id is None
                 else metrics_statement(start, end, group_by, user_id))
    rows = session.execute(statement)
    # PostgreSQL sums bigints as numeric (Decimal): integers either way.
    return [(label, event, int(count)) for label, event, count in rows]


def sessions_statement(start: date, end: date, group_by: str = "day",
                       user_id: str | None = None) -> Select:
    """Rows (date, sessions, total_microseconds) of the play/stop sessions whose play is in the
    inclusive UTC date range, per period label of the play, in ascending date order.

    The contract pairs each stop with the user's preceding play-or-stop event (ordered by
    timestamp, then id, i.e. arrival) when that event is a play. Read from the play's side that
    is the same pairing: a play makes a session exactly when the user's next play-or-stop event
    is a stop. So the window looks forward (LEAD) from each play, and needs no event before
    start: the next event of a play in the range is never earlier than the play. Inside the
    range the window sees a contiguous stretch of each user's sequence, so LEAD is right for
    every play but the user's last play-or-stop event in the range; for that one (at most one
    play per user) the next event is looked up after the range, one probe of the partial index.
    """
    start_at, end_at = utc_bounds(start, end)
    events = _events
    in_time_order = dict(partition_by=events.c.user_id,
                         order_by=(events.c.occurred_at, events.c.id))
    play_stop = (
        select(
            events.c.user_id,
            events.c.event,
            events.c.occurred_at,
            func.lead(events.c.event).over(**in_time_order).label("next_event"),
            func.lead(events.c.occurred_at).over(**in_time_order).label("next_at"),
        )
        .where(is_play_or_stop(events), *_in_range(events.c.occurred_at, start_at, end_at))
    )
    if user_id is not None:
        # Inside the window's input, so only this user's events are read and ordered.
        play_stop = play_stop.where(events.c.user_id == user_id)
    play_stop = play_stop.subquery("play_stop")

    next_event, next_at = play_stop.c.next_event, play_stop.c.next_at
    if end_at is not None:
        later = events.alias("later")

        def first_after_range(column):
            return (select(column)
                    .where(later.c.user_id == play_stop.c.user_id, is_play_or_stop(later),
                           later.c.occurred_at >= end_at)
                    .order_by(later.c.occurred_at, later.c.id)
                    .limit(1)
                    .scalar_subquery())

        # COALESCE evaluates the lookup only where the window found no next event.
        next_event = func.coalesce(next_event, first_after_range(later.c.event))
        next_at = func.coalesce(next_at, first_after_range(later.c.occurred_at))

    # One row per session: the play's date and the duration, counted and summed per date.
    play_at = play_stop.c.occurred_at
    paired = (
        select(utc_date(play_at).label("day"),
               microseconds_between(play_at, next_at).label("microseconds"))
        .where(play_stop.c.event == "play", next_event == "stop")
        .subquery("paired")
    )
    daily = (
        select(paired.c.day, func.count().label("sessions"),
               func.sum(paired.c.microseconds).label("total_microseconds"))
        .group_by(paired.c.day)
        .subquery("daily")
    )
    label = period_label(daily.c.day, group_by)
    return (
        select(label.label("date"), func.sum(daily.c.sessions).label("sessions"),
               func.sum(daily.c.total_microseconds).label("total_microseconds"))
        .group_by(label)
        .order_by(label)
    )


def sessions_rollup_statement(start: date, end: date, group_by: str = "day") -> Select:
    """sessions_statement for all users, read from the daily session counts of rollups.py."""
    counts = SessionCount.__table__
    label = period_label(counts.c.day, group_by)
    n = func.sum(counts.c.sessions)
    return (
        select(label.label("date"), n.label("sessions"),
               func.sum(counts.c.total_us).label("total_microseconds"))
        .where(counts.c.day >= start, counts.c.day <= end)
        .group_by(label)
        .having(n > 0)
        .order_by(label)
    )


def sessions(session: Session, start: date, end: date, group_by: str = "day",
             user_id: str | None = None) -> list[tuple[str, int, int]]:
    """(date, sessions, total_microseconds) per period: one user's paired from the events,
    all users' summed from the daily session counts."""
    statement = (sessions_rollup_statement(start, end, group_by) if user_id is None
                 else sessions_statement(start, end, group_by, user_id))
    rows = session.execute(statement)
    # PostgreSQL sums bigints as numeric (Decimal): integers either way.
    return [(date_label, int(count), int(total)) for date_label, count, total in rows]
