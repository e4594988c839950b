"""The write path: every insert and every delete of events goes through here.

One function per direction:

- ``store_events``: deduplicate, take the writer turn, insert (the dialect picks the
  strategy), let every aggregate of the registry see the stored events, commit; a
  transaction that lost a race is run again;
- ``delete_events``: delete the events a query selects, let every aggregate see them, commit;
  a transaction that lost a race is run again;
- ``fold_aggregates``: let every aggregate merge the rows concurrent writers spread out; a
  transaction that lost a race is run again;
- ``fold_activity``: move the active users' log into their bitmaps, before a read of them;
- ``rebuild_aggregates``: recompute every aggregate from the events.

Nothing else writes events or aggregates. See docs/architecture.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import TypeVar

from sqlalchemy import Connection, Engine, Select, delete
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from analytics import dialects, folding
from analytics.aggregates import REGISTRY, Aggregate, active_users
from analytics.models import Event, table_of
from analytics.rows import EventRow, StoredEvent

# PostgreSQL's deadlock_detected and serialization_failure: the transaction lost a race with
# another one and is safe to run again. SQLite serialises writers, so it never reports these.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
ATTEMPTS = 4

_events = table_of(Event)
T = TypeVar("T")


def is_retryable(exc: DBAPIError) -> bool:
    """Whether the database aborted the transaction only because it lost a race."""
    return getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def store_events(session: Session, rows: Sequence[EventRow]) -> list[bool]:
    """Store rows and commit; for each row, whether it was stored (False: a duplicate).

    A row is a duplicate when one with the same user_id and event_id is stored already
    (committed, or by a concurrent transaction that then commits) or comes earlier in
    ``rows``; the unique constraint decides, so concurrent retries store an event once. All
    the new rows and their aggregates are committed together, or none is.
    """
    stored = [False] * len(rows)
    positions, seen = [], set()
    for position, row in enumerate(rows):
        key = row.dedupe_key()
        if key is not None:
            if key in seen:
                continue  # a repeat inside this batch: the first one wins
            seen.add(key)
        positions.append(position)
    if not positions:
        return stored
    todo = [rows[position] for position in positions]
    engine = session.get_bind()
    assert isinstance(engine, Engine)  # sessions of this app are bound to its engine
    dialect = dialects.of(engine)

    def transaction() -> list[int | None]:
        with dialect.writer_turn(engine):
            try:
                ids = _insert(session.connection(), dialect, todo)
                session.commit()
            except BaseException:
                session.rollback()  # before the turn passes on: SQLite's lock is held
                raise
        return ids

    ids = _run_again_if_it_lost_a_race(transaction)
    if active_users.folds_log(ids):
        FOLDER.wake(engine)
    for position, id_ in zip(positions, ids):
        stored[position] = id_ is not None
    return stored


def _insert(conn: Connection, dialect: dialects.Dialect, rows: list[EventRow]) -> list[int | None]:
    ids: list[int | None] = dialect.insert_events(conn, rows)
    added = [
        StoredEvent(row.occurred_at, id_, row.event, row.user_id)
        for row, id_ in zip(rows, ids)
        if id_ is not None
    ]
    if added:
        _tell_aggregates(conn, dialect, added, deleting=False)
    return ids


def _tell_aggregates(
    conn: Connection, dialect: dialects.Dialect, events: list[StoredEvent], deleting: bool
) -> None:
    """Each aggregate's hook for ``events``, in the same transaction, in lock order."""

    def hook(aggregate: Aggregate) -> None:
        if deleting:
            aggregate.on_delete(conn, events)
        else:
            aggregate.on_insert(conn, events)

    _in_lock_order(conn, dialect, [(a, a.locks(events, deleting)) for a in REGISTRY], hook)


def _in_lock_order(
    conn: Connection,
    dialect: dialects.Dialect,
    needs: list[tuple[Aggregate, list[dialects.Lock]]],
    run: Callable[[Aggregate], None],
) -> None:
    """``run`` each aggregate of ``needs`` (with the locks it needs): first those that need
    none, then, once the others' locks are taken (in REGISTRY order, in one statement), the
    others. Why this order: docs/architecture.md, "Lock order"."""
    for aggregate, locks in needs:
        if not locks:
            run(aggregate)
    dialect.take_locks(conn, [lock for _, locks in needs for lock in locks])
    for aggregate, locks in needs:
        if locks:
            run(aggregate)


def delete_events(engine: Engine, ids: Select) -> int:
    """Delete the events whose ids ``ids`` selects, in one transaction; how many it deleted."""
    statement = (
        delete(_events)
        .where(_events.c.id.in_(ids.scalar_subquery()))
        .returning(_events.c.occurred_at, _events.c.id, _events.c.event, _events.c.user_id)
    )

    dialect = dialects.of(engine)

    def transaction() -> int:
        with dialect.writer_turn(engine), engine.connect() as conn:
            # On SQLite the write lock is taken at BEGIN, so the read inside the DELETE cannot
            # be outdated by another writer (which SQLite would report as busy without waiting).
            conn = conn.execution_options(immediate=True)
            with conn.begin():
                # RETURNING names exactly the rows this transaction deleted (a concurrent
                # delete may have taken others), so the aggregates lose exactly those.
                removed = [
                    StoredEvent(at.astimezone(UTC), id_, event, user_id)
                    for at, id_, event, user_id in conn.execute(statement)
                ]
                if removed:
                    _tell_aggregates(conn, dialect, removed, deleting=True)
            return len(removed)

    return _run_again_if_it_lost_a_race(transaction)


def _run_again_if_it_lost_a_race(transaction: Callable[[], T]) -> T:
    """Run ``transaction``, and again (up to ATTEMPTS times in all) while the database aborts
    it only because it lost a race; it must roll back everything it did when it raises."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return transaction()
        except DBAPIError as exc:
            if attempt == ATTEMPTS or not is_retryable(exc):
                raise
            # Jitter, so that the two transactions that collided do not collide again.
            time.sleep(random.uniform(0.005, 0.05) * attempt)
    raise AssertionError("unreachable")


def fold_aggregates(engine: Engine, before_bucket: int) -> None:
    """Let every aggregate merge what concurrent writers spread over several rows, for the
    buckets before ``before_bucket``, in one short transaction."""
    dialect = dialects.of(engine)

    def transaction() -> None:
        with dialect.writer_turn(engine), engine.begin() as conn:
            _in_lock_order(
                conn,
                dialect,
                [(a, a.fold_locks()) for a in REGISTRY],
                lambda aggregate: aggregate.fold(conn, before_bucket),
            )

    # The fold moves rows that writers and deleters add to, in another order than theirs.
    _run_again_if_it_lost_a_race(transaction)


def fold_activity(engine: Engine, chunk: int | None = None) -> None:
    """Move the pairs writers logged into the active-user bitmaps: in one transaction (what a
    read of the bitmaps does first, so that it sees every committed write), or ``chunk`` pairs
    a transaction until the log is empty (the folding thread, so that writers go between)."""
    dialect = dialects.of(engine)
    while True:
        with dialect.writer_turn(engine), engine.begin() as conn:
            dialect.take_locks(conn, active_users.fold_locks())
            moved = dialect.fold_activity(conn, chunk)
        if chunk is None or moved < chunk:
            return


# This process's folding thread (analytics/folding.py).
FOLDER = folding.Folder(
    lambda engine: fold_activity(engine, active_users.fold_chunk(dialects.of(engine)))
)


def rebuild_aggregates(engine: Engine) -> None:
    """Recompute every aggregate from the events (after a restore or a manual change), in one
    transaction; writers wait until it is committed."""
    dialect = dialects.of(engine)
    with dialect.writer_turn(engine), engine.connect() as conn:
        conn = conn.execution_options(immediate=True)
        with conn.begin():
            dialect.lock_tables(conn, [table for a in REGISTRY for table in a.tables])
            for aggregate in REGISTRY:
                aggregate.rebuild(conn)
