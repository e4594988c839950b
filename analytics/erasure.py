"""Erasing every stored event of one user, in bounded batches, as the purge deletes (see
retention.py): each batch is one short transaction through ``writer.delete_events``, so the
aggregates lose the events in the same transaction and ingest carries on between batches.
Plain functions of an Engine: no Flask.
"""

from __future__ import annotations

from datetime import datetime
from time import sleep

from sqlalchemy import Engine, Select, exists, select

from analytics import retention, writer
from analytics.models import Event, utcnow

# After each batch the erasure rests this many times as long as the batch took: less than the
# purge (a client is waiting for the answer), but enough that the writers queued behind each
# batch go first.
PACE = 0.25
# Rows a concurrent purge has locked are skipped by a batch; when only those are left, the
# erasure looks again after this long (the purge either deletes them or gives them back).
LOCKED_RETRY_S = 0.05


def _user_ids(user_id: str, batch_size: int) -> Select[int]:
    # The oldest first, by the (user_id, occurred_at) index. SKIP LOCKED as in the purge: a
    # concurrent purge or erasure holding some rows never makes this one wait, nor deadlock.
    return (
        select(Event.id)
        .where(Event.user_id == user_id)
        .order_by(Event.occurred_at)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )


def _has_events_from_before(engine: Engine, user_id: str, began: datetime) -> bool:
    with engine.connect() as conn:
        return conn.execute(
            select(exists().where(Event.user_id == user_id, Event.received_at <= began))
        ).scalar_one()


def erase_user(
    engine: Engine, user_id: str, *, batch_size: int | None = None, pace: float = PACE
) -> int:
    """Delete every stored event of ``user_id``; how many this call deleted. When it returns,
    none of the events stored before it began is left."""
    if batch_size is None:
        batch_size = retention.default_batch_size(engine)
    began = utcnow()
    total = 0
    while True:
        total += retention.delete_in_batches(
            engine, lambda: writer.delete_events(engine, _user_ids(user_id, batch_size)), pace=pace
        )
        # Events the user sends meanwhile are deleted too, but are not waited for: a user
        # who keeps sending would keep the erasure going forever.
        if not _has_events_from_before(engine, user_id, began):
            return total
        sleep(LOCKED_RETRY_S)
