"""The schema: the ``events`` table, the aggregates derived from it, the access keys, and the
types that keep time in UTC."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import BIT, JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The events that build sessions. Queries name them as literals, not bound parameters, so that
# both databases can prove that a query implies the WHERE of the partial index
# ix_events_play_stop and use it (and SQLAlchemy has no expanding IN to render per execution).
PLAY_OR_STOP = ("play", "stop")
PLAY_OR_STOP_SQL = "event IN ('play', 'stop')"


def is_play_or_stop(table: Any) -> Any:
    """``table.event IN ('play', 'stop')``, written with literals."""
    return table.c.event.in_([literal_column(f"'{name}'", String) for name in PLAY_OR_STOP])


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always returned as an aware UTC datetime.

    PostgreSQL keeps it as ``timestamptz``; SQLite as ISO text in UTC, which sorts correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def sqlite_timestamp(at: datetime) -> str:
    """The text UTCDateTime stores on SQLite for an aware datetime, as SQLAlchemy's DateTime
    writes it (``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC, the year on four digits): for statements
    that pass timestamps to SQLite without the column type."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.replace(tzinfo=None).isoformat(" ", "microseconds")


def utcnow() -> datetime:
    return datetime.now(UTC)


# 64-bit ids on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """The model's Table, typed as one (``__table__`` is declared as any FromClause)."""
    return cast(Table, model.__table__)


class Event(Base):
    """One tracked event as stored: what happened, to whom, when, and when we heard of it."""

    __tablename__ = "events"

    # Arrival order: breaks ties between events of equal timestamp when pairing sessions.
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    meta: Mapped[dict | None] = mapped_column("metadata", JSONDocument, nullable=True)
    # Chosen by the client so that a retried event is stored once (NULL: never deduplicated).
    event_id: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (
        # Idempotency: the database, not a read-then-write check, decides what is a duplicate,
        # so concurrent retries store an event once. Scoped by user_id so that the constraint
        # stays enforceable when the table is distributed by user. Also the ON CONFLICT target.
        UniqueConstraint("user_id", "event_id"),
        # One user's events in time order: /metrics?user_id=, a user's export and erasure,
        # and the active-user check of a delete.
        Index("ix_events_user_id_occurred_at", "user_id", "occurred_at"),
        # Session pairing: each user's play/stop sequence in (timestamp, arrival) order, the
        # window's PARTITION BY / ORDER BY, answered from the index alone.
        Index(
            "ix_events_play_stop",
            "user_id",
            "occurred_at",
            "id",
            "event",
            postgresql_where=text(PLAY_OR_STOP_SQL),
            sqlite_where=text(PLAY_OR_STOP_SQL),
        ),
        # Retention purge: the oldest received events first.
        Index("ix_events_received_at", "received_at"),
        # GET /events: a range of time, oldest first (then by arrival), without a sort.
        Index("ix_events_occurred_at_id", "occurred_at", "id"),
    )


class EventHour(Base):
    """Events per name and UTC hour, counted per quarter hour of it (aggregates/event_counts.py):
    the quarter-hour grain, four buckets to a row."""

    __tablename__ = "event_hours"

    # The hour's first bucket (a multiple of QUARTERS): compared with buckets like any other.
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[str] = mapped_column(String(255), primary_key=True)
    # Spreads concurrent writers of one hour and name over several rows; only sums mean
    # anything.
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    # Events in the hour's buckets bucket, bucket + 1, bucket + 2 and bucket + 3.
    q0: Mapped[int] = mapped_column(BigInteger)
    q1: Mapped[int] = mapped_column(BigInteger)
    q2: Mapped[int] = mapped_column(BigInteger)
    q3: Mapped[int] = mapped_column(BigInteger)


QUARTERS = ("q0", "q1", "q2", "q3")


def quarter_of(bucket: int) -> int:
    """Which quarter of its UTC hour a bucket is: ``QUARTERS[quarter_of(b)]`` counts it, in the
    row of ``b - quarter_of(b)`` (rounding down for buckets before 1970 too)."""
    return bucket % len(QUARTERS)


class PlayStopSession(Base):
    """One play/stop session (aggregates/sessions.py): a person can check a pairing with a
    plain SELECT."""

    __tablename__ = "sessions"

    play_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    stop_id: Mapped[int] = mapped_column(BigId)
    user_id: Mapped[str] = mapped_column(String(255))
    play_at: Mapped[datetime] = mapped_column(UTCDateTime())
    bucket: Mapped[int] = mapped_column(Integer)  # of play_at
    duration_us: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # The repair window of one user, and /sessions?user_id=.
        Index("ix_sessions_user_id_play_at", "user_id", "play_at"),
    )


class SessionBucket(Base):
    """Sessions per quarter-hour bucket of the play, with their summed durations in
    microseconds so that totals are exact (aggregates/sessions.py)."""

    __tablename__ = "session_buckets"

    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    sessions: Mapped[int] = mapped_column(BigInteger)
    total_us: Mapped[int] = mapped_column(BigInteger)


class Bitmap(TypeDecorator):
    """A fixed-size set of user ordinals (aggregates/active_users.py), given and read as
    ``BITMAP_BYTES`` bytes, most significant bit first: bit i is ordinal ``chunk * BITMAP_BITS
    + i``. PostgreSQL keeps it as ``bit(n)``, whose ``bit_or`` and ``bit_count`` take unions
    in the database; SQLite as a BLOB, with the same functions registered on each connection.
    """

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(BIT(BITMAP_BITS))
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | str | None:
        if value is None or dialect.name != "postgresql":
            return value
        return "x" + value.hex()  # bit's input syntax for hexadecimal

    def process_result_value(self, value: bytes | str | None, dialect: Dialect) -> bytes | None:
        if value is None or not isinstance(value, str):
            return value
        return int(value, 2).to_bytes(BITMAP_BYTES, "big")


BITMAP_BITS = 2048
BITMAP_BYTES = BITMAP_BITS // 8
# The spans bitmaps are kept at, in buckets: quarter hour, UTC hour, six UTC hours, UTC day.
# Each divides the next (aggregates/active_users.py tiles runs with them).
SPANS = (1, 4, 24, 96)


def pieces_of_bucket(bucket: int) -> list[tuple[int, int]]:
    """The (span, first bucket) of every bitmap that contains ``bucket``."""
    return [(span, bucket - bucket % span) for span in SPANS]


def bit_positions(
    active: Iterable[tuple[str, int, int]], ordinals: dict[str, int]
) -> list[tuple[int, int, int, int]]:
    """(span, bucket, chunk, bit) of each (user_id, span, bucket), in key order: bit ``bit``
    (0 the first, most significant) of chunk ``chunk`` is the user's."""
    return sorted(
        {
            (span, bucket, *divmod(ordinals[user_id], BITMAP_BITS))
            for user_id, span, bucket in active
        }
    )


class UserOrdinal(Base):
    """A small number per user, their bit in the active-user bitmaps. Removed, with the user's
    bits, once the user has no events left (an erasure, or the purge of their last ones)."""

    __tablename__ = "user_ordinals"

    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(255), unique=True)


class UserBitmap(Base):
    """The users with at least one event in a span of buckets starting at ``bucket``: a
    quarter hour (span 1), a UTC hour (4), six UTC hours (24) or a UTC day (96), for ordinals
    of one chunk
    (aggregates/active_users.py)."""

    __tablename__ = "user_bitmaps"

    span: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    # As in event_hours: concurrent writers set bits in different rows; reads take the union.
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bits: Mapped[bytes] = mapped_column(Bitmap)


class ActivityLog(Base):
    """A user's activity in a bucket that is not yet in ``user_bitmaps``: writers append here,
    and a fold moves the rows into the bitmaps in bulk (aggregates/active_users.py)."""

    __tablename__ = "activity_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(255))
    bucket: Mapped[int] = mapped_column(Integer)


class AccessKey(Base):
    """An access key as stored: its name, what it may do and from where, never its secret.

    Only the SHA-256 digest of the secret is kept (see auth.py); a revoked key keeps its row,
    so that its name stays taken and ``keys list`` still shows when it was last used.
    """

    __tablename__ = "keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Hex SHA-256 of the secret: what a presented key is looked up by.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Space-separated, e.g. "ingest read".
    scopes: Mapped[str] = mapped_column(String(64))
    # Space-separated allowed browser origins; NULL: any origin.
    origins: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A rate such as "100/second"; NULL: no limit of its own.
    rate: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
