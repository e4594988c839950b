"""Events per quarter-hour bucket and name: answers /metrics for all users in any time zone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import Connection, delete, func, insert, literal, select

from analytics import dialects
from analytics.aggregates import shard_of_writer
from analytics.dialects import Lock, bucket_of
from analytics.models import Event, EventBucket, table_of
from analytics.periods import bucket_of as bucket_of_instant
from analytics.rows import StoredEvent

_events = table_of(Event)
_table = table_of(EventBucket)
_KEYS = ("bucket", "event", "shard")


class EventCounts:
    name = "event_counts"
    tables: tuple[str, ...] = ("event_buckets",)

    def locks(self, events: Sequence[StoredEvent], deleting: bool) -> list[Lock]:
        return []  # counts only add: writers of one bucket wait on its row, if at all

    def on_insert(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        self._add(conn, events, 1)

    def on_delete(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        self._add(conn, events, -1)

    def rebuild(self, conn: Connection) -> None:
        conn.execute(delete(_table))
        bucket = bucket_of(_events.c.occurred_at)
        conn.execute(
            insert(_table).from_select(
                ["bucket", "event", "shard", "n"],
                select(bucket, _events.c.event, literal(0), func.count()).group_by(
                    bucket, _events.c.event
                ),
            )
        )

    def fold(self, conn: Connection, before_bucket: int) -> None:
        dialects.of(conn).fold_totals(conn, _table, _KEYS, ("n",), before_bucket)

    @staticmethod
    def _add(conn: Connection, events: Sequence[StoredEvent], sign: int) -> None:
        deltas = Counter((bucket_of_instant(e.occurred_at), e.event) for e in events)
        shard = shard_of_writer(conn)
        rows = [(bucket, event, shard, sign * n) for (bucket, event), n in sorted(deltas.items())]
        if rows:
            dialects.of(conn).add_totals(conn, _table, rows, keys=_KEYS, totals=("n",))
