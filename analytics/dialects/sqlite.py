"""SQLite: one writer at a time through a lock file, the driver's executemany for inserts,
and the SQL constructs of analytics.dialects."""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Insert,
    String,
    Table,
    column,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.sql.selectable import Subquery

from analytics.dialects import (
    DEFAULT_LOCK_WAIT_MS,
    Lock,
    LockTimeout,
    arguments,
    bucket_of,
    compact_json_text,
    json_counts,
    lock_wait_seconds,
    microseconds_between,
    period_index,
    register,
    utc_text,
)
from analytics.models import (
    BITMAP_BITS,
    BITMAP_BYTES,
    Event,
    UTCDateTime,
    pieces_of_bucket,
    sqlite_timestamp,
    table_of,
)
from analytics.rows import EventRow

_events = table_of(Event)
# Result codes of a statement that found the database locked and gave up waiting.
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# Result codes of a database file that cannot be opened, read or written (SQLITE_IOERR,
# SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB): SQLite's unreachable database.
_FILE_UNUSABLE = frozenset({10, 13, 14, 26})


def _epoch_seconds(timestamp: str) -> str:
    # strftime would round a fraction to milliseconds: only the whole-second part is given.
    return f"CAST(strftime('%s', substr({timestamp}, 1, 19)) AS INTEGER)"


@compiles(bucket_of, "sqlite")
def _bucket_of(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    [timestamp] = arguments(element, compiler, **kw)
    seconds = _epoch_seconds(timestamp)
    # Integer division truncates toward zero: step back one for instants before 1970.
    return f"(({seconds} - (({seconds} % 900) + 900) % 900) / 900)"


@compiles(microseconds_between, "sqlite")
def _microseconds_between(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    start, end = arguments(element, compiler, **kw)

    def micro(ts: str) -> str:
        return f"({_epoch_seconds(ts)} * 1000000 + CAST(substr({ts}, 21, 6) AS INTEGER))"

    return f"({micro(end)} - {micro(start)})"


@compiles(json_counts, "sqlite")
def _json_counts(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    key, count = arguments(element, compiler, **kw)
    return f"json_group_object({key}, {count})"


@compiles(period_index, "sqlite")
def _period_index(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    # The bounds are not a parameter here: bind_bounds gives the function its own copy (a
    # parameter would be copied into Python again for every row).
    bucket = compiler.process(element.clauses.clauses[0], **kw)
    return f"period_index({bucket})"


@compiles(utc_text, "sqlite")
def _utc_text(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    # Stored as this very text (models.sqlite_timestamp).
    [timestamp] = arguments(element, compiler, **kw)
    return timestamp


@compiles(compact_json_text, "sqlite")
def _compact_json_text(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    # json() writes the stored text minified; a JSON null is absent metadata.
    [document] = arguments(element, compiler, **kw)
    return f"nullif(json({document}), 'null')"


class SQLite:
    name = "sqlite"
    spreads_writers = False  # one writer at a time anyway
    orders_json_counts = False  # aggregates take no ORDER BY before SQLite 3.44

    _insert = (
        "INSERT INTO events (event, user_id, occurred_at, received_at, metadata, "
        "event_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, event_id) DO NOTHING"
    )

    @contextlib.contextmanager
    def writer_turn(self, engine: Engine) -> Iterator[None]:
        """Wait in line for the database's write lock on a lock file beside it, at most
        ``lock_wait_seconds(engine)``.

        SQLite does not queue writers: one that finds the lock taken polls with growing
        sleeps, so under steady writes some wait far longer than the writes before them took.
        An exclusive lock on a file, on which the operating system wakes a waiter as soon as
        it is released, makes them take turns.
        """
        turn = _take_turn(engine, lock_wait_seconds(engine))
        try:
            yield
        finally:
            _give_turn(turn)

    def is_lock_timeout(self, exc: DBAPIError) -> bool:
        code = getattr(exc.orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)

    def is_unreachable(self, exc: DBAPIError) -> bool:
        # sqlite3 raises OperationalError for a missing table or a syntax error too: only the
        # result code tells a file that cannot be used. None for the module's own errors.
        error = exc.orig
        code = error.sqlite_errorcode if isinstance(error, sqlite3.Error) else None
        return code is not None and code & 0xFF in _FILE_UNUSABLE

    def insert_events(self, conn: Connection, rows: Sequence[EventRow]) -> list[int | None]:
        stamps: dict[datetime, str] = {}  # received_at is most often one value for a batch
        values: list[tuple[Any, ...]] = []
        for r in rows:
            received = stamps.get(r.received_at)
            if received is None:
                received = stamps[r.received_at] = sqlite_timestamp(r.received_at)
            values.append(
                (
                    r.event,
                    r.user_id,
                    sqlite_timestamp(r.occurred_at),
                    received,
                    r.metadata_json,
                    r.event_id,
                )
            )
        # The driver's executemany steps one prepared statement in C. It cannot RETURN, so the
        # new rows are found by rowid: the transaction holds the write lock, and each new row
        # gets the next rowid after the largest, so they are the last ``inserted`` rowids.
        driver = _driver(conn)
        before = driver.total_changes
        conn.exec_driver_sql(self._insert, values)
        inserted = driver.total_changes - before
        if not inserted:
            return [None] * len(rows)
        last: int = conn.exec_driver_sql("SELECT max(id) FROM events").scalar_one()
        if inserted == len(rows):
            return list(range(last - inserted + 1, last + 1))
        # Some were duplicates (only rows with an event_id can be): the rows that went in are
        # in the order of ``rows``, so walk both.
        went_in = iter(
            conn.exec_driver_sql(
                "SELECT id, user_id, event_id FROM events WHERE id > ? ORDER BY id",
                (last - inserted,),
            ).all()
        )
        ids: list[int | None] = []
        following = next(went_in, None)
        for r in rows:
            if following is not None and (following[1], following[2]) == (r.user_id, r.event_id):
                ids.append(following[0])
                following = next(went_in, None)
            else:
                ids.append(None)
        return ids

    def take_locks(self, conn: Connection, locks: list[Lock]) -> None:
        pass  # the write transaction already excludes every other writer

    def lock_tables(self, conn: Connection, tables: list[str]) -> None:
        pass  # the write transaction already excludes every other writer

    def add_totals(
        self,
        conn: Connection,
        table: Table,
        rows: list[tuple[Any, ...]],
        keys: tuple[str, ...],
        totals: tuple[str, ...],
    ) -> None:
        names = (*keys, *totals)
        statement = _TOTALS.get(table.name)
        if statement is None:
            added = ", ".join(f"{name} = {table.name}.{name} + excluded.{name}" for name in totals)
            statement = _TOTALS[table.name] = (
                f"INSERT INTO {table.name} ({', '.join(names)}) "
                f"VALUES ({', '.join('?' * len(names))}) "
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {added}"
            )
        conn.exec_driver_sql(statement, rows)  # the driver's executemany, stepped in C

    def fold_totals(
        self,
        conn: Connection,
        table: Table,
        keys: tuple[str, ...],
        totals: tuple[str, ...],
        before_bucket: int,
    ) -> None:
        pass  # every writer adds to shard 0

    def bind_bounds(self, conn: Connection, bounds: list[int]) -> dict[str, Any]:
        # Registered on this connection for the statement about to run on it (a connection
        # serves one thread at a time).
        _driver(conn).create_function(
            "period_index", 1, functools.partial(bisect.bisect_right, bounds), deterministic=True
        )
        return {}

    def insert_ignoring(self, table: Table) -> Insert:
        return sqlite.insert(table).on_conflict_do_nothing()

    def log_activity(self, conn: Connection, active: list[tuple[str, int]]) -> None:
        conn.exec_driver_sql("INSERT INTO activity_log (user_id, bucket) VALUES (?, ?)", active)

    def fold_activity(self, conn: Connection, limit: int | None = None) -> int:
        # The writer turn excludes every other writer: the oldest pairs read here are the
        # oldest until this transaction ends.
        rows = conn.exec_driver_sql(
            "SELECT id, user_id, bucket FROM activity_log ORDER BY id LIMIT ?",
            (-1 if limit is None else limit,),
        ).all()
        if not rows:
            return 0
        conn.exec_driver_sql("DELETE FROM activity_log WHERE id <= ?", (rows[-1][0],))
        active = {(user_id, bucket) for _, user_id, bucket in rows}
        users = {user_id for user_id, _ in active}
        # Most users are numbered already: looked up first, the rest inserted and read back.
        ordinals = _ordinals(conn, users)
        missing = sorted(users - ordinals.keys())
        if missing:
            conn.exec_driver_sql(
                "INSERT INTO user_ordinals (user_id) VALUES (?)", [(u,) for u in missing]
            )
            ordinals |= _ordinals(conn, missing)
        # A bit a pair in its quarter hour's mask; the longer spans OR whole quarter masks.
        quarters: dict[tuple[int, int], int] = {}
        for user_id, bucket in active:
            chunk, bit = divmod(ordinals[user_id], BITMAP_BITS)
            quarters[bucket, chunk] = quarters.get((bucket, chunk), 0) | 1 << (
                BITMAP_BITS - 1 - bit
            )
        masks: dict[tuple[int, int, int], int] = {}
        for (bucket, chunk), mask in quarters.items():
            for span, first in pieces_of_bucket(bucket):
                masks[span, first, chunk] = masks.get((span, first, chunk), 0) | mask
        conn.exec_driver_sql(
            "INSERT INTO user_bitmaps (span, bucket, chunk, shard, bits) VALUES (?, ?, ?, 0, ?) "
            "ON CONFLICT (span, bucket, chunk, shard) DO UPDATE "
            "SET bits = bits_or(user_bitmaps.bits, excluded.bits)",
            [(*key, _blob(mask)) for key, mask in masks.items()],
        )
        return len(rows)

    def clear_bits(self, conn: Connection, bits: list[tuple[int, int, int, int]]) -> None:
        conn.exec_driver_sql(
            "UPDATE user_bitmaps SET bits = bits_and_not(bits, ?) "
            "WHERE span = ? AND bucket = ? AND chunk = ?",
            [(_blob(mask), *key) for key, mask in _masks(bits).items()],
        )

    def put_bitmaps(self, conn: Connection, rows: list[tuple[int, int, int, bytes]]) -> None:
        conn.exec_driver_sql(
            "INSERT INTO user_bitmaps (span, bucket, chunk, shard, bits) VALUES (?, ?, ?, 0, ?)",
            rows,
        )

    def fold_bits(self, conn: Connection, before_bucket: int) -> None:
        pass  # every fold sets bits in shard 0

    def count_users(
        self, conn: Connection, pieces: list[tuple[int, int, int]]
    ) -> list[tuple[int, int]]:
        counted = conn.exec_driver_sql(
            "SELECT period, sum(n) FROM ("
            "  SELECT json_extract(p.value, '$[2]') AS period, bits_count(bits_union(b.bits)) AS n"
            "  FROM json_each(?) AS p JOIN user_bitmaps AS b"
            "    ON b.span = json_extract(p.value, '$[0]')"
            "   AND b.bucket = json_extract(p.value, '$[1]')"
            "  GROUP BY 1, b.chunk) GROUP BY period",
            (json.dumps(pieces),),
        )
        return [(period, n) for period, n in counted]

    def spans_source(self) -> Subquery:
        return (
            text(
                "SELECT json_extract(value, '$[0]') AS user_id, json_extract(value, '$[1]') AS lo, "
                "json_extract(value, '$[2]') AS hi FROM json_each(:spans)"
            )
            .columns(
                column("user_id", String), column("lo", UTCDateTime()), column("hi", UTCDateTime())
            )
            .subquery("spans")
        )

    def spans_json(self, spans: Sequence[tuple[str, datetime, datetime | None]]) -> str:
        return json.dumps(
            [
                [user_id, sqlite_timestamp(lo), sqlite_timestamp(hi) if hi else None]
                for user_id, lo, hi in spans
            ]
        )


_TOTALS: dict[str, str] = {}


def _ordinals(conn: Connection, users: Iterable[str]) -> dict[str, int]:
    numbered = conn.exec_driver_sql(
        "SELECT user_id, ordinal FROM user_ordinals WHERE user_id IN "
        "(SELECT value FROM json_each(?))",
        (json.dumps(sorted(users)),),
    )
    return {user_id: ordinal for user_id, ordinal in numbered}


def _driver(conn: Connection) -> sqlite3.Connection:
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)  # checked out by this transaction
    return driver


def make_engine(url: URL, busy_timeout_s: int, lock_wait_ms: int = DEFAULT_LOCK_WAIT_MS) -> Engine:
    """An engine for a SQLite file: WAL, a busy timeout, the bound on the writer turn, and the
    period_index function."""
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # reported as an unreachable database on first use
    timeout = max(busy_timeout_s, 30)
    engine = create_engine(
        url,
        connect_args={"timeout": timeout},
        hide_parameters=True,
        execution_options={"lock_wait_ms": lock_wait_ms},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # SQLAlchemy emits BEGIN itself (the driver's implicit transactions are unreliable);
        # WAL lets readers run beside the writer.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={timeout * 1000}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("immediate")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# The bitmap operations PostgreSQL has built in (bit_or, bit_count, |, & ~), for
# aggregates/active_users.py: a bitmap is BITMAP_BYTES bytes, most significant bit first.
def _bits(blob: bytes) -> int:
    return int.from_bytes(blob, "big")


def _blob(bits: int) -> bytes:
    return bits.to_bytes(BITMAP_BYTES, "big")


class _BitsUnion:
    def __init__(self) -> None:
        self.bits = 0

    def step(self, blob: bytes) -> None:
        self.bits |= _bits(blob)

    def finalize(self) -> bytes:
        return _blob(self.bits)


def _masks(bits: list[tuple[int, int, int, int]]) -> dict[tuple[int, int, int], int]:
    """The mask of each (span, bucket, chunk) row from (span, bucket, chunk, bit) positions."""
    masks: dict[tuple[int, int, int], int] = {}
    for span, bucket, chunk, bit in bits:
        key = (span, bucket, chunk)
        masks[key] = masks.get(key, 0) | 1 << (BITMAP_BITS - 1 - bit)
    return masks


@event.listens_for(Engine, "connect")
def _register_bitmap_functions(dbapi_connection: object, _record: object) -> None:
    # On every SQLite connection of every engine (the service's, the migrations', a script's).
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    dbapi_connection.create_function(
        "bits_or", 2, lambda a, b: _blob(_bits(a) | _bits(b)), deterministic=True
    )
    dbapi_connection.create_function(
        "bits_and_not", 2, lambda a, b: _blob(_bits(a) & ~_bits(b)), deterministic=True
    )
    dbapi_connection.create_function(
        "bits_count", 1, lambda blob: _bits(blob).bit_count(), deterministic=True
    )
    # typeshed declares aggregates over integers only.
    dbapi_connection.create_aggregate("bits_union", 1, _BitsUnion)  # type: ignore[arg-type]


def _take_turn(engine: Engine, seconds: float) -> _Turn | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    turn = _writer_lock(f"{database}-writer.lock")
    if turn is None:  # no such folder, not writable: the database itself will say so
        return None
    in_process, descriptor = turn
    deadline = time.monotonic() + seconds
    if not in_process.acquire(timeout=seconds):  # the other threads of this process
        raise _turn_timeout(seconds)
    try:
        _lock_file(descriptor, in_process, deadline)  # the other processes
    except _GaveUp:
        raise _turn_timeout(seconds) from None  # this process's lock is released for us
    except BaseException:
        in_process.release()
        raise
    return turn


def _turn_timeout(seconds: float) -> LockTimeout:
    return LockTimeout(
        f"another writer held the database for over {seconds:g} s", whole_database=True
    )


class _GaveUp(Exception):
    """The file lock was not had in time; its waiter passes the turn on when it gets it."""


def _lock_file(descriptor: int, in_process: threading.Lock, deadline: float) -> None:
    """The exclusive lock on the file, waited for until ``deadline``.

    flock has no timeout, and polling would lose the kernel's hand-over to the next waiter, so
    a thread waits in flock; if the caller gives up first, that thread releases the file lock
    and this process's lock (which the caller keeps meanwhile) as soon as it gets them.
    """
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    guard = threading.Lock()
    had, abandoned = False, False
    error: BaseException | None = None
    done = threading.Event()

    def wait_in_flock() -> None:
        nonlocal had, error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error = exc
        with guard:
            if not abandoned:
                had = error is None
                done.set()
                return
        if error is None:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        in_process.release()

    threading.Thread(target=wait_in_flock, name="sqlite-writer-turn", daemon=True).start()
    done.wait(max(0.0, deadline - time.monotonic()))
    with guard:
        if had:
            return
        if error is not None:
            raise error
        abandoned = True
    raise _GaveUp()


def _give_turn(turn: _Turn | None) -> None:
    if turn is not None:
        in_process, descriptor = turn
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        in_process.release()


# This process's lock for a database and an open descriptor of its lock file.
_Turn = tuple[threading.Lock, int]
_writer_locks: dict[tuple[int, str], _Turn] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(path: str) -> _Turn | None:
    """This process's lock for ``path`` and an open descriptor of the file, opened once per
    process (flock locks belong to an open file, which a forked child would share)."""
    key = (os.getpid(), path)
    with _writer_locks_guard:
        if key not in _writer_locks:
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError:
                return None
            _writer_locks[key] = (threading.Lock(), descriptor)
        return _writer_locks[key]


DIALECT = register(SQLite())
