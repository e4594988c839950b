"""PostgreSQL: binary COPY for batches, advisory locks per user, totals added from one JSON
parameter, and the SQL constructs of analytics.dialects."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    String,
    Table,
    bindparam,
    cast,
    column,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.sql.selectable import Subquery

from analytics.dialects import (
    Lock,
    arguments,
    bucket_of,
    compact_json_text,
    json_counts,
    microseconds_between,
    period_index,
    register,
    utc_text,
)
from analytics.models import BITMAP_BITS, SPANS, Event, UTCDateTime, table_of
from analytics.rows import EventRow

_events = table_of(Event)


@compiles(bucket_of, "postgresql")
def _bucket_of(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    [timestamp] = arguments(element, compiler, **kw)
    # Whole seconds first: numeric division keeps only so many decimals, and a fraction just
    # under a bucket edge would round up to it.
    return f"CAST(floor(floor(EXTRACT(EPOCH FROM {timestamp})) / 900) AS INTEGER)"


@compiles(microseconds_between, "postgresql")
def _microseconds_between(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    start, end = arguments(element, compiler, **kw)
    # The interval of two timestamptz values has no month part, so its epoch is exact.
    return f"CAST(EXTRACT(EPOCH FROM ({end}) - ({start})) * 1000000 AS BIGINT)"


@compiles(utc_text, "postgresql")
def _utc_text(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    [timestamp] = arguments(element, compiler, **kw)
    # A timestamp's own text (in DateStyle ISO, set for every connection) costs the server a
    # third of to_char's or of a timestamptz's text, which converts by the session's zone.
    return f"CAST(({timestamp}) AT TIME ZONE 'UTC' AS TEXT)"


# Either a whole JSON string (kept as it is) or a separator with the space jsonb writes after
# it (the space dropped): jsonb's text has no other space outside its strings.
_JSON_SPACES = r"""'("(?:[^"\\]|\\.)*")|([,:]) '"""


@compiles(compact_json_text, "postgresql")
def _compact_json_text(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    [document] = arguments(element, compiler, **kw)
    return (
        f"nullif(regexp_replace(CAST({document} AS TEXT), {_JSON_SPACES}, '\\1\\2', 'g'), 'null')"
    )


@compiles(json_counts, "postgresql")
def _json_counts(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    key, count = arguments(element, compiler, **kw)
    # Byte order of UTF-8 ("C") is code-point order; json_object_agg would add spaces.
    return (
        f"'{{' || string_agg(CAST(to_json({key}) AS TEXT) || ':' || {count}, ',' "
        f"ORDER BY {key} COLLATE \"C\") || '}}'"
    )


@compiles(period_index, "postgresql")
def _period_index(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    bucket, bounds = arguments(element, compiler, **kw)
    return f"width_bucket({bucket}, CAST({bounds} AS integer[]))"


# Batches are COPYed (in binary: psycopg writes each row in C) into a temporary staging table
# and moved into events by one INSERT ... SELECT ... ON CONFLICT DO NOTHING, since COPY itself
# cannot skip duplicates. The ids are reserved first, in batch order, so the rows that went in
# are known by id alone.
_STAGING = """
    CREATE TEMPORARY TABLE IF NOT EXISTS incoming_events (
        id bigint, event varchar, user_id varchar, occurred_at timestamptz,
        received_at timestamptz, metadata text, event_id varchar
    ) ON COMMIT DELETE ROWS
"""
# Whether this connection has its staging table yet (a rolled-back transaction takes it away),
# and a block of ids per id-sequence step (migration 0005 makes the sequence step by 1000).
_IDS = """
    SELECT to_regclass('pg_temp.incoming_events') IS NOT NULL, seqincrement,
           ARRAY(SELECT nextval(seqrelid::regclass)
                 FROM generate_series(1, (%(n)s + seqincrement - 1) / seqincrement))
    FROM pg_sequence WHERE seqrelid = CAST(pg_get_serial_sequence('events', 'id') AS regclass)
"""
_COPY = (
    "COPY incoming_events (id, event, user_id, occurred_at, received_at, metadata, "
    "event_id) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ("int8", "varchar", "varchar", "timestamptz", "timestamptz", "text", "varchar")
# Rows staged earlier in the same transaction have smaller ids: "id >= first" leaves them out.
# The ids that went in come back only when some did not. Rows go in ordered by their dedupe
# key (their ids are already given), so two batches holding the same events in different
# orders wait for each other's keys in one order and never deadlock.
_MOVE = """
    WITH inserted AS (
        INSERT INTO events (id, event, user_id, occurred_at, received_at, metadata, event_id)
        SELECT id, event, user_id, occurred_at, received_at, CAST(metadata AS jsonb), event_id
        FROM incoming_events WHERE id >= %(first)s
        ORDER BY user_id, event_id
        ON CONFLICT (user_id, event_id) DO NOTHING
        RETURNING id
    )
    SELECT CASE WHEN count(*) < %(n)s THEN COALESCE(array_agg(id), '{}') END FROM inserted
"""
# Below this many rows a plain INSERT ... RETURNING beats the staging table's fixed costs.
_FEW_ROWS = 20


def _few_statement() -> ReturningInsert[Any]:
    insert = postgresql.insert(_events).values(
        metadata=cast(bindparam("metadata_json", type_=String), postgresql.JSONB)
    )
    return insert.on_conflict_do_nothing(index_elements=["user_id", "event_id"]).returning(
        _events.c.id, _events.c.user_id, _events.c.event_id, _events.c.occurred_at, _events.c.event
    )


class PostgreSQL:
    name = "postgresql"
    spreads_writers = True
    orders_json_counts = True

    def __init__(self) -> None:
        self._few = _few_statement()

    def writer_turn(self, engine: Engine) -> AbstractContextManager[None]:
        return contextlib.nullcontext()  # row locks and the unique constraint suffice

    def is_lock_timeout(self, exc: DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) in _GAVE_UP_WAITING

    def is_unreachable(self, exc: DBAPIError) -> bool:
        error = exc.orig
        if isinstance(error, psycopg.InterfaceError):  # the connection is closed or lost
            return True
        if not isinstance(error, psycopg.OperationalError):
            return False
        # No SQLSTATE: the client could not connect, or lost the server before an answer.
        return error.sqlstate is None or error.sqlstate.startswith(_SERVER_UNAVAILABLE)

    def insert_events(self, conn: Connection, rows: Sequence[EventRow]) -> list[int | None]:
        if len(rows) < _FEW_ROWS:
            return _insert_returning(conn, self._few, rows)
        return _insert_copy(conn, rows)

    def take_locks(self, conn: Connection, locks: list[Lock]) -> None:
        if locks:
            conn.exec_driver_sql(
                _TAKE_LOCKS,
                {
                    "key": [advisory_key(lock) for lock in locks],
                    "exclusive": [lock.exclusive for lock in locks],
                },
            )

    def lock_tables(self, conn: Connection, tables: list[str]) -> None:
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")

    def add_totals(
        self,
        conn: Connection,
        table: Table,
        rows: list[tuple[Any, ...]],
        keys: tuple[str, ...],
        totals: tuple[str, ...],
    ) -> None:
        statement = _TOTALS.get(table.name)
        if statement is None:
            statement = _TOTALS[table.name] = _totals_statement(conn, table, keys, totals)
        # One array a column, sent in binary like every array parameter here.
        conn.exec_driver_sql(
            statement, {f"c{i}": list(column) for i, column in enumerate(zip(*rows))}
        )

    def fold_totals(
        self,
        conn: Connection,
        table: Table,
        keys: tuple[str, ...],
        totals: tuple[str, ...],
        before_bucket: int,
    ) -> None:
        others = [key for key in keys if key not in ("bucket", "shard")]
        grouped = ", ".join(["bucket", *others])
        sums = ", ".join(f"sum({name})" for name in totals)
        added = ", ".join(f"{name} = {table.name}.{name} + excluded.{name}" for name in totals)
        conn.exec_driver_sql(
            f"WITH moved AS (DELETE FROM {table.name} WHERE shard <> 0 "
            f"AND bucket < %(before)s RETURNING {grouped}, {', '.join(totals)}) "
            f"INSERT INTO {table.name} ({grouped}, shard, {', '.join(totals)}) "
            f"SELECT {grouped}, 0, {sums} FROM moved GROUP BY {grouped} ORDER BY {grouped} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {added}",
            {"before": before_bucket},
        )

    def bind_bounds(self, conn: Connection, bounds: list[int]) -> dict[str, Any]:
        return {"bounds": bounds}

    def insert_ignoring(self, table: Table) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing()

    def log_activity(self, conn: Connection, active: list[tuple[str, int]]) -> None:
        users, buckets = (list(column) for column in zip(*active))
        conn.exec_driver_sql(_LOG_ACTIVITY, {"user": users, "bucket": buckets})

    def fold_activity(self, conn: Connection, limit: int | None = None) -> int:
        moved: int = conn.exec_driver_sql(_FOLD_ACTIVITY, {"limit": limit}).scalar_one()
        return moved

    def clear_bits(self, conn: Connection, bits: list[tuple[int, int, int, int]]) -> None:
        conn.exec_driver_sql(_CLEAR_BITS, _bit_arrays(bits))

    def put_bitmaps(self, conn: Connection, rows: list[tuple[int, int, int, bytes]]) -> None:
        for start in range(0, len(rows), 10_000):
            span, bucket, chunk, bits = zip(*rows[start : start + 10_000])
            conn.exec_driver_sql(
                _PUT_BITMAPS,
                {
                    "span": list(span),
                    "bucket": list(bucket),
                    "chunk": list(chunk),
                    "bits": ["x" + value.hex() for value in bits],
                },
            )

    def fold_bits(self, conn: Connection, before_bucket: int) -> None:
        conn.exec_driver_sql(_FOLD_BITS, {"before": before_bucket})

    def count_users(
        self, conn: Connection, pieces: list[tuple[int, int, int]]
    ) -> list[tuple[int, int]]:
        spans, buckets, periods = (list(column) for column in zip(*pieces))
        # The union sorts a bitmap row per piece and chunk: in memory, not spilled to disk.
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        counted = conn.exec_driver_sql(
            _COUNT_USERS, {"span": spans, "bucket": buckets, "period": periods}
        )
        return [(period, n) for period, n in counted]

    def spans_source(self) -> Subquery:
        return (
            text(
                "SELECT user_id, lo, hi FROM json_to_recordset(CAST(:spans AS json)) "
                "AS w(user_id varchar, lo timestamptz, hi timestamptz)"
            )
            .columns(
                column("user_id", String), column("lo", UTCDateTime()), column("hi", UTCDateTime())
            )
            .subquery("spans")
        )

    def spans_json(self, spans: Sequence[tuple[str, datetime, datetime]]) -> str:
        return json.dumps(
            [
                {"user_id": user_id, "lo": lo.isoformat(), "hi": hi.isoformat() if hi else None}
                for user_id, lo, hi in spans
            ]
        )


# lock_not_available (lock_timeout) and query_canceled (statement_timeout): the statement gave
# up waiting; the server is there and busy.
_GAVE_UP_WAITING = frozenset({"55P03", "57014"})
# SQLSTATEs of a server that cannot serve the session: a connection exception, too few
# resources (connections, memory, disk), a shutdown or dropped database, a system error. The
# other OperationalErrors (e.g. 55000, an object not in the state a statement needs) are not.
_SERVER_UNAVAILABLE = ("08", "53", "57P", "58")


def advisory_key(lock: Lock) -> int:
    """The one bigint key PostgreSQL's advisory lock functions take: the lock's space above 32
    bits, its key below."""
    return lock.space << 32 | lock.key


# Every array parameter here is binary (%(name)b): psycopg writes a text array in Python,
# quoting element by element, at about twice the CPU of a binary one (docs/decisions.md).

# unnest gives the rows in the arrays' order, and each row's lock is taken as it comes.
_TAKE_LOCKS = """
    SELECT CASE WHEN x THEN pg_advisory_xact_lock(k) ELSE pg_advisory_xact_lock_shared(k) END
    FROM unnest(CAST(%(key)b AS bigint[]), CAST(%(exclusive)b AS boolean[])) AS l(k, x)
"""
_TOTALS: dict[str, str] = {}


def _totals_statement(
    conn: Connection, table: Table, keys: tuple[str, ...], totals: tuple[str, ...]
) -> str:
    # All rows in one statement, in key order, so that concurrent writers lock rows in the
    # same order and never deadlock.
    names = [*keys, *totals]
    arrays = ", ".join(
        f"CAST(%(c{i})b AS {table.c[name].type.compile(conn.dialect)}[])"
        for i, name in enumerate(names)
    )
    listed = ", ".join(names)
    added = ", ".join(f"{name} = {table.name}.{name} + excluded.{name}" for name in totals)
    return (
        f"INSERT INTO {table.name} ({listed}) SELECT * FROM unnest({arrays}) "
        f"AS r({listed}) ORDER BY {', '.join(keys)} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {added}"
    )


def _insert_returning(
    conn: Connection, statement: ReturningInsert[Any], rows: Sequence[EventRow]
) -> list[int | None]:
    returned = conn.execute(
        statement,
        [
            {
                "event": r.event,
                "user_id": r.user_id,
                "occurred_at": r.occurred_at,
                "received_at": r.received_at,
                "metadata_json": r.metadata_json,
                "event_id": r.event_id,
            }
            for r in rows
        ],
    ).all()
    # Rows with an event_id are told apart by it; the others all went in, and each is given
    # the id of a returned row with its own user, time and name (the smallest first).
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for id_, user_id, event_id, occurred_at, event in sorted(returned, reverse=True):
        key = (user_id, event_id) if event_id is not None else (user_id, occurred_at, event)
        by_key.setdefault(key, []).append(id_)
    ids: list[int | None] = []
    for row in rows:
        key = row.dedupe_key() or (row.user_id, row.occurred_at, row.event)
        found = by_key.get(key)
        ids.append(found.pop() if found else None)
    return ids


def _insert_copy(conn: Connection, rows: Sequence[EventRow]) -> list[int | None]:
    staged, step, blocks = conn.exec_driver_sql(_IDS, {"n": len(rows)}).one()
    if not staged:
        conn.exec_driver_sql(_STAGING)
    # Ascending, given in batch order: ties between equal timestamps are broken by arrival.
    ids = [first + offset for first in sorted(blocks) for offset in range(step)][: len(rows)]
    driver = conn.connection.driver_connection
    assert driver is not None  # a live connection, checked out by this transaction
    cursor = driver.cursor()
    try:
        with cursor.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            for id_, r in zip(ids, rows):
                copy.write_row(
                    (
                        id_,
                        r.event,
                        r.user_id,
                        r.occurred_at,
                        r.received_at,
                        r.metadata_json,
                        r.event_id,
                    )
                )
    except conn.dialect.loaded_dbapi.Error as exc:
        # Presented as SQLAlchemy's error, so callers tell an unreachable database from a
        # failing one the same way as for every other statement.
        raise DBAPIError.instance(
            _COPY,
            None,
            exc,
            conn.dialect.loaded_dbapi.Error,
            connection_invalidated=bool(cursor.connection.closed),
            dialect=conn.dialect,
        ) from None
    finally:
        cursor.close()
    went_in = conn.exec_driver_sql(_MOVE, {"first": ids[0], "n": len(rows)}).scalar()
    if went_in is None:
        return list(ids)
    kept = set(went_in)
    return [id_ if id_ in kept else None for id_ in ids]


# Active-user bitmaps (aggregates/active_users.py). Rows are written in key order, like the
# totals, so that concurrent writers never wait for each other in a cycle; a bit already set
# rewrites nothing.
_BITS = f"bit({BITMAP_BITS})"
# The bits travel as positions (a few integers) and become bitmaps in the database.
_MASKS = f"""
    SELECT span, bucket, chunk, bit_or(set_bit(CAST(0 AS {_BITS}), bit, 1)) AS bits
    FROM unnest(CAST(%(span)b AS smallint[]), CAST(%(bucket)b AS int[]),
                CAST(%(chunk)b AS int[]), CAST(%(bit)b AS int[])) AS r(span, bucket, chunk, bit)
    GROUP BY span, bucket, chunk
"""
_LOG_ACTIVITY = """
    INSERT INTO activity_log (user_id, bucket)
    SELECT * FROM unnest(CAST(%(user)b AS varchar[]), CAST(%(bucket)b AS int[]))
"""
# A bucket's bitmaps of the longer spans are unions of its quarter hours' (models.SPANS: each
# span divides the next), so a bit is set once a pair and the longer spans OR whole rows. The
# first bucket of a span is models.pieces_of_bucket's, in SQL, where % truncates toward zero:
# the remainder is made non-negative for buckets before 1970.
assert SPANS[0] == 1
_SPAN_MASKS = " UNION ALL ".join(
    "SELECT 1 AS span, bucket, chunk, bits FROM quarters"
    if span == 1
    else f"SELECT {span}, bucket - (bucket %% {span} + {span}) %% {span}, chunk, bit_or(bits) "
    "FROM quarters GROUP BY 2, 3"
    for span in SPANS
)
# The log's oldest pairs this statement sees (all of them when the limit is NULL), moved into
# the bitmaps: the users without an ordinal numbered (in user_id order), the masks built, the
# rows set in key order. The caller holds active_users.fold_locks, so no other transaction
# numbers users meanwhile, and the users already numbered are looked up rather than inserted
# again (a conflict costs more). Each step reads its input once whatever the planner expects:
# it cannot count a CTE's rows, and takes the log for empty after an analysis that found it so
# (autovacuum's, just after a fold), so a join of two CTEs, or an IN over the log, would run
# once per pair. Hence the range of ids, the new users' ordinals in one JSON object built
# once, and the pairs numbered before the grouping, which then does not carry that object.
_FOLD_ACTIVITY = f"""
    WITH moved AS (
        DELETE FROM activity_log
        WHERE id <= (SELECT max(id) FROM (
            SELECT id FROM activity_log ORDER BY id LIMIT %(limit)s) AS oldest)
        RETURNING user_id, bucket
    ), pairs AS (
        SELECT DISTINCT user_id, bucket FROM moved
    ), added AS (
        INSERT INTO user_ordinals (user_id)
        SELECT DISTINCT p.user_id FROM pairs AS p
        WHERE NOT EXISTS (SELECT FROM user_ordinals AS o WHERE o.user_id = p.user_id)
        ORDER BY p.user_id
        RETURNING user_id, ordinal
    ), new_ordinals AS MATERIALIZED (
        SELECT coalesce(jsonb_object_agg(user_id, ordinal), '{{}}') AS ordinals FROM added
    ), numbered AS MATERIALIZED (
        SELECT p.bucket,
               coalesce(o.ordinal, CAST(n.ordinals ->> p.user_id AS integer)) AS ordinal
        FROM pairs AS p CROSS JOIN new_ordinals AS n
        LEFT JOIN user_ordinals AS o ON o.user_id = p.user_id
    ), quarters AS (
        SELECT bucket, ordinal / {BITMAP_BITS} AS chunk,
               bit_or(set_bit(CAST(0 AS {_BITS}), ordinal %% {BITMAP_BITS}, 1)) AS bits
        FROM numbered
        GROUP BY 1, 2
    ), stored AS (
        INSERT INTO user_bitmaps (span, bucket, chunk, shard, bits)
        SELECT span, bucket, chunk, 0, bits FROM ({_SPAN_MASKS}) AS masks
        ORDER BY span, bucket, chunk
        ON CONFLICT (span, bucket, chunk, shard) DO UPDATE
        SET bits = user_bitmaps.bits | excluded.bits
        WHERE user_bitmaps.bits | excluded.bits <> user_bitmaps.bits
    )
    SELECT count(*) FROM moved
"""
# An UPDATE joined to the masks would lock rows in the join's order, which a concurrent
# writer's key order can cross; the locking SELECT takes them in key order first.
_CLEAR_BITS = f"""
    WITH locked AS MATERIALIZED (
        SELECT u.span, u.bucket, u.chunk, u.shard, m.bits
        FROM user_bitmaps AS u JOIN ({_MASKS}) AS m
          ON u.span = m.span AND u.bucket = m.bucket AND u.chunk = m.chunk
        ORDER BY u.span, u.bucket, u.chunk, u.shard
        FOR UPDATE OF u)
    UPDATE user_bitmaps AS u SET bits = u.bits & ~l.bits FROM locked AS l
    WHERE u.span = l.span AND u.bucket = l.bucket AND u.chunk = l.chunk AND u.shard = l.shard
"""
_PUT_BITMAPS = f"""
    INSERT INTO user_bitmaps (span, bucket, chunk, shard, bits)
    SELECT span, bucket, chunk, 0, CAST(bits AS {_BITS})
    FROM unnest(CAST(%(span)b AS smallint[]), CAST(%(bucket)b AS int[]),
                CAST(%(chunk)b AS int[]), CAST(%(bits)b AS text[])) AS r(span, bucket, chunk, bits)
"""
_FOLD_BITS = """
    WITH moved AS (DELETE FROM user_bitmaps WHERE shard <> 0 AND bucket < %(before)s
                   RETURNING span, bucket, chunk, bits)
    INSERT INTO user_bitmaps (span, bucket, chunk, shard, bits)
    SELECT span, bucket, chunk, 0, bit_or(bits) FROM moved
    GROUP BY span, bucket, chunk ORDER BY span, bucket, chunk
    ON CONFLICT (span, bucket, chunk, shard) DO UPDATE
    SET bits = user_bitmaps.bits | excluded.bits
"""
# The union of each period's bitmaps, chunk by chunk, and the bits set in it.
_COUNT_USERS = """
    SELECT period, CAST(sum(n) AS bigint) FROM (
        SELECT p.period, bit_count(bit_or(b.bits)) AS n
        FROM unnest(CAST(%(span)b AS smallint[]), CAST(%(bucket)b AS int[]),
                    CAST(%(period)b AS int[])) AS p(span, bucket, period)
        JOIN user_bitmaps AS b ON b.span = p.span AND b.bucket = p.bucket
        GROUP BY p.period, b.chunk) AS chunks
    GROUP BY period
"""


def _bit_arrays(bits: list[tuple[int, int, int, int]]) -> dict:
    return {
        name: list(values) for name, values in zip(("span", "bucket", "chunk", "bit"), zip(*bits))
    }


def engine_arguments(
    connect_timeout: int, statement_timeout_ms: int, lock_wait_ms: int | None = None
) -> dict:
    """create_engine's connect_args for this service."""
    # JIT compilation of short aggregate queries costs more than it saves.
    # Timestamps written as text in ISO form (utc_text counts on it).
    options = ["-c jit=off", "-c datestyle=ISO"]
    if statement_timeout_ms:
        options.append(f"-c statement_timeout={statement_timeout_ms}")
    if lock_wait_ms:
        options.append(f"-c lock_timeout={lock_wait_ms}")
    return {"connect_timeout": connect_timeout, "options": " ".join(options)}


DIALECT = register(PostgreSQL())
