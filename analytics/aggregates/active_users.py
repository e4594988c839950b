"""Who was active when: per span of time, the set of users with at least one event, as
bitmaps of user ordinals. Answers /active-users (distinct users per local period, exactly)
by taking the union of the bitmaps that tile each period and counting its bits.

Distinct counts do not add up, so a period cannot be summed from smaller ones; but a union
can. A local period of any zone is a run of quarter-hour buckets (docs/architecture.md), and a
run is tiled by few pieces when bitmaps are kept at four spans: quarter hours, UTC hours,
quarters of a UTC day (six hours) and UTC days. A 30-day month needs about 30 day bitmaps
instead of 2,880 quarter-hour ones; a day in Kathmandu (+05:45), 12 pieces.

Each user gets a small number, their ordinal, in ``user_ordinals``; ordinals are cut into
chunks of BITMAP_BITS so that a bitmap row has a fixed size whatever the number of users.

Writers do not set bits: they append each user's (user_id, bucket) to ``activity_log``, and a
fold moves the log into the bitmaps in bulk, where many pairs share a row. A process's folding
thread folds it about once every 2**FOLD_BITS events, and every delete and every read of the
bitmaps folds first, so that the log stays short and reads stay exact (docs/architecture.md).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Connection, delete, exists, select

from analytics import dialects
from analytics.dialects import Lock, bucket_of
from analytics.models import (
    BITMAP_BITS,
    BITMAP_BYTES,
    SPANS,
    ActivityLog,
    Event,
    UserBitmap,
    UserOrdinal,
    bit_positions,
    pieces_of_bucket,
    table_of,
)
from analytics.periods import bucket_of as bucket_of_instant
from analytics.periods import bucket_start
from analytics.rows import StoredEvent

# Writers that add users and deleters that may remove them take these stripes of users,
# shared and exclusive (see on_delete).
STRIPES = 64
LOCK_SPACE = 2  # of the stripes' locks (aggregates.Lock)
# Held by the one transaction that folds the log at a time; after the stripes, in their space.
FOLD_LOCK = Lock(LOCK_SPACE, STRIPES, exclusive=True)
# A write wakes its process's folding thread when one of its events' ids hashes to zero in this
# many bits: about once every 2**FOLD_BITS events stored, however many writers there are.
FOLD_BITS = 15
# Pairs the folding thread moves a transaction on a database that serialises writers (SQLite's
# writer turn), so that writers wait for a chunk at most, never for a whole fold.
FOLD_CHUNK = 4096

_events = table_of(Event)
_log = table_of(ActivityLog)
_ordinals = table_of(UserOrdinal)
_bitmaps = table_of(UserBitmap)


def pieces(lo: int, hi: int) -> list[tuple[int, int]]:
    """The (span, first bucket) pieces that tile the buckets lo..hi-1: the largest aligned
    spans (models.SPANS, each of which divides the next) that fit, smaller ones at the edges."""
    tiles = []
    bucket = lo
    while bucket < hi:
        for span in reversed(SPANS):
            if bucket % span == 0 and bucket + span <= hi:
                break
        tiles.append((span, bucket))
        bucket += span
    return tiles


# A user's piece: (user_id, span, first bucket), flat, as the dialects take them.
UserPiece = tuple[str, int, int]


def _stripes(users: Iterable[str]) -> list[int]:
    return sorted({zlib.crc32(user_id.encode("utf-8")) % STRIPES for user_id in users})


def fold_chunk(dialect: dialects.Dialect) -> int:
    """Pairs the folding thread moves a transaction: FOLD_CHUNK where writers wait for a fold
    (SQLite's writer turn), a wake's worth where they do not (PostgreSQL). Why: "Active users"
    in docs/architecture.md."""
    return 1 << FOLD_BITS if dialect.spreads_writers else FOLD_CHUNK


def folds_log(ids: Iterable[int | None]) -> bool:
    """Whether the write that stored these event ids (None: not stored) wakes the folding
    thread: Fibonacci hashing of the ids, which spreads ids in any arithmetic progression
    (PostgreSQL's blocks of ids) evenly."""
    return any(
        (id_ * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF < 1 << (64 - FOLD_BITS)
        for id_ in ids
        if id_ is not None
    )


def fold_locks() -> list[Lock]:
    """What a fold holds: every stripe shared, so that no deleter of any user is at work (the
    log may hold anyone), and the fold lock, so that one fold numbers users at a time."""
    return [*(Lock(LOCK_SPACE, stripe, exclusive=False) for stripe in range(STRIPES)), FOLD_LOCK]


class ActiveUsers:
    name = "active_users"
    tables: tuple[str, ...] = ("user_ordinals", "user_bitmaps", "activity_log")

    def locks(self, events: Sequence[StoredEvent], deleting: bool) -> list[Lock]:
        """The stripes of the events' users: shared by writers, exclusive for a delete (see
        on_delete). Taken in a statement before this aggregate's own, whose snapshot must
        then see what a deleter that held the stripes committed. A delete also holds what a
        fold needs (``fold_locks``), in the same order."""
        stripes = _stripes({e.user_id for e in events})
        if deleting:
            mine = set(stripes)
            return [
                *(Lock(LOCK_SPACE, stripe, exclusive=stripe in mine) for stripe in range(STRIPES)),
                FOLD_LOCK,
            ]
        return [Lock(LOCK_SPACE, stripe, exclusive=False) for stripe in stripes]

    def fold_locks(self) -> list[Lock]:
        return fold_locks()

    def on_insert(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        dialect = dialects.of(conn)
        # Each user's buckets, once: the fold makes their pieces.
        dialect.log_activity(
            conn, list({(e.user_id, bucket_of_instant(e.occurred_at)) for e in events})
        )

    def on_delete(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """Clear the users' bits in every piece that held a deleted event and holds none of
        theirs now; drop the ordinals of users left with no event at all.

        The exclusive stripes (``locks``), taken before anything is read, make writers of
        these users wait until this transaction ends, so what is read of their events stays
        true until the bits are cleared, and no writer keeps an ordinal that is dropped here.
        Clearing only what must go, in one pass in key order, keeps the row locks in the
        order writers take them.
        """
        dialect = dialects.of(conn)
        # The users' logged pairs into the bitmaps first, to be cleared below where they must.
        dialect.fold_activity(conn)
        users = {e.user_id for e in events}
        ordinals = _ordinals_of(conn, users)
        # Events written behind the write path (a restore, before rebuild-aggregates) have no
        # ordinal, so no bits to clear.
        touched = {piece for piece in _touched(events) if piece[0] in ordinals}
        gone = touched - _still_active(conn, touched) if touched else set()
        if gone:
            dialect.clear_bits(conn, bit_positions(gone, ordinals))
        conn.execute(
            delete(_ordinals).where(
                _ordinals.c.user_id.in_(sorted(users)),
                ~exists().where(_events.c.user_id == _ordinals.c.user_id),
            )
        )

    def rebuild(self, conn: Connection) -> None:
        dialect = dialects.of(conn)
        conn.execute(delete(_log))  # every logged pair is recomputed from its event below
        conn.execute(
            delete(_ordinals).where(~exists().where(_events.c.user_id == _ordinals.c.user_id))
        )
        conn.execute(
            dialect.insert_ignoring(_ordinals).from_select(
                ["user_id"],
                select(_events.c.user_id)
                .distinct()
                .where(~exists().where(_ordinals.c.user_id == _events.c.user_id))
                .order_by(_events.c.user_id),
            )
        )
        conn.execute(delete(_bitmaps))
        masks: dict[tuple[int, int, int], int] = defaultdict(int)
        active = (
            select(_ordinals.c.ordinal, bucket_of(_events.c.occurred_at))
            .join_from(_events, _ordinals, _events.c.user_id == _ordinals.c.user_id)
            .distinct()
            .execution_options(yield_per=50_000)
        )
        for ordinal, bucket in conn.execute(active):
            chunk, bit = divmod(ordinal, BITMAP_BITS)
            mask = 1 << (BITMAP_BITS - 1 - bit)
            for span, first in pieces_of_bucket(bucket):
                masks[(span, first, chunk)] |= mask
        if masks:
            dialect.put_bitmaps(
                conn,
                [
                    (span, bucket, chunk, bits.to_bytes(BITMAP_BYTES, "big"))
                    for (span, bucket, chunk), bits in sorted(masks.items())
                ],
            )

    def fold(self, conn: Connection, before_bucket: int) -> None:
        dialect = dialects.of(conn)
        dialect.fold_activity(conn)
        dialect.fold_bits(conn, before_bucket)


def _touched(events: Sequence[StoredEvent]) -> set[UserPiece]:
    """Each user's piece that holds one of ``events``."""
    return {
        (e.user_id, span, first)
        for e in events
        for span, first in pieces_of_bucket(bucket_of_instant(e.occurred_at))
    }


def _ordinals_of(conn: Connection, users: set[str]) -> dict[str, int]:
    return dict(
        conn.execute(
            select(_ordinals.c.user_id, _ordinals.c.ordinal).where(
                _ordinals.c.user_id.in_(sorted(users))
            )
        ).all()
    )


def _still_active(conn: Connection, touched: set[UserPiece]) -> set[UserPiece]:
    """The pieces of ``touched`` in which their user still has an event."""
    dialect = dialects.of(conn)
    spans = dialect.spans_source()
    bounds: dict[tuple[str, datetime, datetime], UserPiece] = {}
    for piece in touched:
        user_id, span, bucket = piece
        bounds[(user_id, bucket_start(bucket), bucket_start(bucket + span))] = piece
    remaining = select(spans.c.user_id, spans.c.lo, spans.c.hi).where(
        exists().where(
            _events.c.user_id == spans.c.user_id,
            _events.c.occurred_at >= spans.c.lo,
            _events.c.occurred_at < spans.c.hi,
        )
    )
    found = conn.execute(remaining, {"spans": dialect.spans_json(list(bounds))}).all()
    return {bounds[(user_id, lo, hi)] for user_id, lo, hi in found}
