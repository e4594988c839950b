"""The aggregates: tables kept exact by the write path, inside the very transaction that
inserts or deletes events, so that reads never see events without their aggregates.

Every aggregate implements ``Aggregate`` and is listed once in ``REGISTRY``; the write path
(analytics/writer.py) calls each one on every insert and every delete, and ``rebuild``
recomputes each from the events. See docs/architecture.md for how to add one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import Connection

from analytics import dialects
from analytics.dialects import Lock
from analytics.rows import StoredEvent

# Concurrent writers of the same bucket spread their additions over this many rows (on a
# database that lets several write at once), so they seldom wait for each other's row locks.
SHARDS = 16


class Aggregate(Protocol):
    """A table (or several) derived from the events."""

    name: str
    tables: tuple[str, ...]  # the tables it owns

    def locks(self, events: Sequence[StoredEvent], deleting: bool) -> list[Lock]:
        """What must be held before ``on_insert`` (or, ``deleting``, ``on_delete``) of
        ``events`` runs, in the order to take them. The writer first calls the hooks of the
        aggregates that return none (their writes must need no lock: additions, say), then
        takes the others' locks, in REGISTRY order, in one statement, then calls their hooks."""

    def on_insert(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """``events`` were just inserted in this transaction (already in the table)."""

    def on_delete(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """``events`` were just deleted in this transaction (already gone from the table)."""

    def rebuild(self, conn: Connection) -> None:
        """Recompute everything from the events as they are."""

    def fold_locks(self) -> list[Lock]:
        """What must be held before ``fold`` runs; the writer takes them as it takes ``locks``."""

    def fold(self, conn: Connection, before_bucket: int) -> None:
        """Merge what concurrent writers spread over several rows, for buckets before
        ``before_bucket`` (which reads would otherwise sum again every time), and what they
        left for later (a log)."""


def shard_of_writer(conn: Connection) -> int:
    """The shard this thread adds to: by its system-wide thread id, so that the writer threads
    of one process and of different processes seldom share one."""
    if not dialects.of(conn).spreads_writers:
        return 0
    return threading.get_native_id() % SHARDS


def _registry() -> tuple[Aggregate, ...]:
    from analytics.aggregates.active_users import ActiveUsers
    from analytics.aggregates.event_counts import EventCounts
    from analytics.aggregates.sessions import Sessions

    # In this order on every path, so that their locks are always taken in one order.
    return (EventCounts(), Sessions(), ActiveUsers())


REGISTRY: tuple[Aggregate, ...] = _registry()
