"""Retention: find and delete events received before a cutoff, in bounded batches.

Plain functions of an Engine, no Flask. Each batch is its own short transaction, so the API
keeps writing and reading while a purge runs, and an interrupted purge keeps what it committed
and can simply be run again.

The boundary: an event is purged when its ``received_at`` is strictly earlier than the cutoff.
The cutoff is "now minus the retention period", rounded down to the whole second, so an event
is always kept for at least the retention period (at most a second longer, until the next run).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from time import monotonic, sleep

from sqlalchemy import Engine, Select, func, select

from analytics import writer
from analytics.models import Event

# Events deleted per transaction. SQLite has one write lock, which the API's writes wait for
# while a batch holds it, so its batches are smaller (bench/scale.py measures the purge).
DEFAULT_BATCH_SIZES = {"sqlite": 200}
DEFAULT_BATCH_SIZE = 1000
# After each batch the purge rests as long as the batch took, times this: it is maintenance,
# and on a small server the API's requests need the same CPUs and disks.
DEFAULT_PACE = 1.0
# ... and at least this long on SQLite, so the writers queued for the lock go first.
WRITERS_FIRST_S = 0.005


def default_batch_size(engine: Engine) -> int:
    return DEFAULT_BATCH_SIZES.get(engine.dialect.name, DEFAULT_BATCH_SIZE)


def retention_cutoff(days: int, now: datetime) -> datetime:
    """The instant before which received events are expired: ``now - days``, whole seconds."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    cutoff = now.astimezone(UTC) - timedelta(days=days)
    return cutoff.replace(microsecond=0)


def format_cutoff(cutoff: datetime) -> str:
    """The cutoff as operators read it in logs: ISO 8601 in UTC with a ``Z``."""
    return cutoff.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def count_expired(engine: Engine, cutoff: datetime) -> int:
    """How many stored events were received strictly before ``cutoff``."""
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(Event).where(Event.received_at < cutoff)
        ).scalar_one()


def _expired_ids(cutoff: datetime, batch_size: int) -> Select[int]:
    # Oldest first, by the received_at index. On PostgreSQL, FOR UPDATE SKIP LOCKED gives
    # concurrent purges disjoint batches instead of making one wait for the other's rows and
    # then find them gone; SQLite ignores it, and serialises writers by its database lock.
    return (
        select(Event.id)
        .where(Event.received_at < cutoff)
        .order_by(Event.received_at)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )


def delete_batch(engine: Engine, cutoff: datetime, batch_size: int) -> int:
    """Delete at most ``batch_size`` expired events in one transaction; return how many."""
    return writer.delete_events(engine, _expired_ids(cutoff, batch_size))


def purge_expired(
    engine: Engine,
    cutoff: datetime,
    *,
    batch_size: int | None = None,
    pace: float = DEFAULT_PACE,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete every event received strictly before ``cutoff``; return how many this call deleted.

    Runs batch after batch until one finds nothing left. Safe beside other purges: together
    they delete each expired event exactly once, and each reports only its own deletions.
    ``on_batch`` is called with the size of each committed batch (for progress reporting).
    ``batch_size`` defaults to ``default_batch_size(engine)``.

    After each batch the purge rests ``pace`` times as long as the batch took (0: not at all),
    so that it takes at most about 1 / (1 + pace) of a CPU from the API. On SQLite it always
    rests a little, so that the writers queued for the database (the dialect's ``writer_turn``)
    go first: otherwise it would take the lock again at once, before they wake, and keep the
    API's writes out until it ended.
    """
    if batch_size is None:
        batch_size = default_batch_size(engine)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if pace < 0:
        raise ValueError("pace must not be negative")
    return delete_in_batches(
        engine, lambda: delete_batch(engine, cutoff, batch_size), pace=pace, on_batch=on_batch
    )


def delete_in_batches(
    engine: Engine,
    delete_one_batch: Callable[[], int],
    *,
    pace: float,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Run ``delete_one_batch`` (one committed transaction, returning how many events it
    deleted) until it deletes none; return the total. After each batch rest ``pace`` times as
    long as it took, and on SQLite at least WRITERS_FIRST_S (see ``purge_expired``); the
    erasure of a user's events (erasure.py) is paced by the same rule."""
    least_rest = WRITERS_FIRST_S if engine.dialect.name == "sqlite" else 0.0
    total = 0
    while True:
        began = monotonic()
        deleted = delete_one_batch()
        if deleted == 0:
            return total
        total += deleted
        if on_batch is not None:
            on_batch(deleted)
        rest = max(least_rest, pace * (monotonic() - began))
        if rest:
            sleep(rest)
