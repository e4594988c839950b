"""Everything that differs between the databases, behind one boundary.

Two kinds of things live here:

- SQL constructs (``bucket_of``, ``microseconds_between``, ``period_index``, and the
  export's ``utc_text`` and ``compact_json_text``) that queries use
  like functions; each dialect module compiles them with ``@compiles``, and on a database
  without a compilation they fail loudly instead of producing wrong numbers;
- a ``Dialect`` per database: how events are inserted (duplicates skipped), how writers take
  turns, how rows are added to a table of totals, how a list of rows is passed as one
  parameter.

Nothing outside this package names a database. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import BigInteger, Connection, Engine, Insert, Integer, String, Table
from sqlalchemy.exc import CompileError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.sql.selectable import Subquery

from analytics.rows import EventRow


class bucket_of(FunctionElement):
    """The quarter-hour bucket of a stored timestamp: whole 15-minute steps since the epoch,
    rounded down (see periods.bucket_of, its Python twin)."""

    type = Integer()
    inherit_cache = True
    name = "bucket_of"

    def __init__(self, timestamp: ColumnElement[Any]):
        super().__init__(timestamp)


class microseconds_between(FunctionElement):
    """``end - start`` of two stored timestamps in whole microseconds, computed exactly."""

    type = BigInteger()
    inherit_cache = True
    name = "microseconds_between"

    def __init__(self, start: ColumnElement[Any], end: ColumnElement[Any]):
        super().__init__(start, end)


class period_index(FunctionElement):
    """The 1-based position of ``bucket`` among ascending ``bounds`` (the ``:bounds``
    parameter, bound with ``Dialect.bind_bounds``): i where bounds[i-1] <= bucket < bounds[i];
    0 below the first bound and len(bounds) from the last one on."""

    type = Integer()
    inherit_cache = True
    name = "period_index"

    def __init__(self, bucket: ColumnElement[Any], bounds: ColumnElement[Any]):
        super().__init__(bucket, bounds)


class utc_text(FunctionElement):
    """A stored timestamp as text in UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``, where the fraction
    may lose its trailing zeros (and its point, when it is all zeros): each database's
    cheapest text of it (SQLite's stored text itself, six digits always)."""

    type = String()
    inherit_cache = True
    name = "utc_text"


class compact_json_text(FunctionElement):
    """Stored metadata as compact JSON text (no spaces after ``,`` and ``:``, non-ASCII as
    is); NULL where it is absent."""

    type = String()
    inherit_cache = True
    name = "compact_json_text"


class json_counts(FunctionElement):
    """An aggregate: the group's (name, count) pairs as the text of one JSON object, so that a
    period's counts come back as one row rather than one per name. Where the dialect
    ``orders_json_counts``, the object is compact and its names are in code-point order:
    the very text the API answers with (docs/architecture.md, "The read path")."""

    type = String()
    inherit_cache = True
    name = "json_counts"

    def __init__(self, key: ColumnElement[Any], count: ColumnElement[Any]):
        super().__init__(key, count)


@compiles(bucket_of)
@compiles(json_counts)
@compiles(microseconds_between)
@compiles(period_index)
@compiles(utc_text)
@compiles(compact_json_text)
def _unsupported(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(
        f"{type(element).__name__} is not implemented for the "
        f"{compiler.dialect.name} dialect (see analytics/dialects/)"
    )


def arguments(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> list[str]:
    """The compiled SQL of a construct's arguments."""
    return [compiler.process(argument, **kw) for argument in element.clauses]


# For engines made without a bound of their own (tools, tests): the configuration's default.
DEFAULT_LOCK_WAIT_MS = 3000


class LockTimeout(SQLAlchemyError):
    """A write gave up waiting for a lock after the configured bound: the database is busy,
    not unreachable, and a retry later may succeed. ``whole_database``: the lock was the one
    every write takes (SQLite's writer turn), so every other write waits for it too."""

    def __init__(self, message: str, whole_database: bool = False):
        super().__init__(message)
        self.whole_database = whole_database


def lock_wait_seconds(engine: Engine) -> float:
    """How long a write on this engine waits for a lock (its ``lock_wait_ms`` option)."""
    wait_ms: int = engine.get_execution_options().get("lock_wait_ms", DEFAULT_LOCK_WAIT_MS)
    return wait_ms / 1000


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether a database error means a statement gave up waiting for a lock (or for its
    statement time), which a database that cannot be reached never reports."""
    if isinstance(exc, LockTimeout):
        return True
    return isinstance(exc, DBAPIError) and any(
        dialect.is_lock_timeout(exc) for dialect in _DIALECTS.values()
    )


def is_unreachable(exc: BaseException) -> bool:
    """Whether a driver's error says the database cannot be reached at all (no connection,
    a server shutting down or out of resources, a database file that cannot be opened), as
    opposed to a statement it refused."""
    return isinstance(exc, DBAPIError) and any(
        dialect.is_unreachable(exc) for dialect in _DIALECTS.values()
    )


@dataclass(frozen=True)
class Lock:
    """An advisory lock held until the transaction ends: ``key`` (32 bits) in the ``space``
    of the aggregate that needs it (a small number of its own), exclusive or shared."""

    space: int
    key: int
    exclusive: bool


class Dialect(Protocol):
    """What the write path and the aggregates need from a database."""

    name: str
    # Whether concurrent writers of the same totals should write to different rows.
    spreads_writers: bool
    # Whether json_counts writes compact objects with their names in code-point order.
    orders_json_counts: bool

    def writer_turn(self, engine: Engine) -> AbstractContextManager[None]:
        """Held around a whole write transaction: waits for the other writers where the
        database lets only one write at a time, at most ``lock_wait_seconds(engine)``, then
        raises LockTimeout."""

    def is_lock_timeout(self, exc: DBAPIError) -> bool:
        """Whether this database's error says a statement gave up waiting for a lock."""

    def is_unreachable(self, exc: DBAPIError) -> bool:
        """Whether this database's driver raised ``exc.orig`` because the database cannot be
        reached; False for another driver's errors."""

    def insert_events(self, conn: Connection, rows: Sequence[EventRow]) -> list[int | None]:
        """Insert rows (no two with the same dedupe key), skipping those already stored; for
        each row its new id, or None when it was a duplicate."""

    def take_locks(self, conn: Connection, locks: list[Lock]) -> None:
        """Take ``locks`` in their order, in one statement, until the transaction ends."""

    def lock_tables(self, conn: Connection, tables: list[str]) -> None:
        """Make other writers wait for these tables until the transaction ends."""

    def add_totals(
        self,
        conn: Connection,
        table: Table,
        rows: list[tuple[Any, ...]],
        keys: tuple[str, ...],
        totals: tuple[str, ...],
    ) -> None:
        """Insert ``rows`` (values of ``keys`` then ``totals``, in key order) into ``table``,
        or add their totals to the rows with the same keys already there."""

    def fold_totals(
        self,
        conn: Connection,
        table: Table,
        keys: tuple[str, ...],
        totals: tuple[str, ...],
        before_bucket: int,
    ) -> None:
        """Add the rows of ``table`` for buckets before ``before_bucket`` into one row per key
        (shard 0), where writers spread them over shards."""

    def bind_bounds(self, conn: Connection, bounds: list[int]) -> dict[str, Any]:
        """Make ``period_index`` use ``bounds`` in the next statement on ``conn``: the
        parameters to pass it (its ``bounds`` parameter, or nothing)."""

    def insert_ignoring(self, table: Table) -> Insert:
        """An INSERT into ``table`` that skips rows whose unique keys are taken."""

    def log_activity(self, conn: Connection, active: list[tuple[str, int]]) -> None:
        """Append (user_id, bucket) pairs to activity_log."""

    def fold_activity(self, conn: Connection, limit: int | None = None) -> int:
        """Move the oldest ``limit`` pairs of activity_log this transaction sees (every one
        when None) into user_bitmaps: number the users that have no ordinal, and set each
        user's bit in shard 0 of every bitmap that holds the bucket
        (``models.pieces_of_bucket``). The caller holds ``active_users.fold_locks()``.
        Returns how many rows of the log it moved."""

    def clear_bits(self, conn: Connection, bits: list[tuple[int, int, int, int]]) -> None:
        """Clear each (span, bucket, chunk, bit) of user_bitmaps in every shard."""

    def put_bitmaps(self, conn: Connection, rows: list[tuple[int, int, int, bytes]]) -> None:
        """Insert whole (span, bucket, chunk, bits) rows into shard 0 of an empty
        user_bitmaps."""

    def fold_bits(self, conn: Connection, before_bucket: int) -> None:
        """OR the shards of user_bitmaps before ``before_bucket`` into shard 0."""

    def count_users(
        self, conn: Connection, pieces: list[tuple[int, int, int]]
    ) -> list[tuple[int, int]]:
        """(period, bits set in the union of its bitmaps) for (span, bucket, period) pieces."""

    def spans_source(self) -> Subquery:
        """A selectable of (user_id, lo, hi) rows read from the JSON parameter ``:spans``
        that ``spans_json`` writes."""

    def spans_json(self, spans: Sequence[tuple[str, datetime, datetime]]) -> str:
        """(user_id, lo, hi) rows as the JSON that ``spans_source`` reads."""


_DIALECTS: dict[str, Dialect] = {}


def register(dialect: Dialect) -> Dialect:
    _DIALECTS[dialect.name] = dialect
    return dialect


def of(bind: Connection | Engine) -> Dialect:
    """The Dialect of a connection or engine; NotImplementedError for another database."""
    name = bind.dialect.name
    try:
        return _DIALECTS[name]
    except KeyError:
        raise NotImplementedError(
            f"the {name} database is not supported (see analytics/dialects/)"
        ) from None


from analytics.dialects import postgresql, sqlite  # noqa: E402,F401  (registers both)
