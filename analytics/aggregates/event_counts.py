"""Events per quarter-hour bucket and name, four buckets (a UTC hour) to a row: answers
/metrics for all users in any time zone."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, case, delete, func, insert, literal, literal_column, select

from analytics import dialects
from analytics.aggregates import shard_of_writer
from analytics.dialects import Lock, bucket_of
from analytics.models import QUARTERS, Event, EventHour, quarter_of, table_of
from analytics.periods import bucket_of as bucket_of_instant
from analytics.rows import StoredEvent

_events = table_of(Event)
_table = table_of(EventHour)
_KEYS = ("bucket", "event", "shard")


class EventCounts:
    name = "event_counts"
    tables: tuple[str, ...] = ("event_hours",)

    def locks(self, events: Sequence[StoredEvent], deleting: bool) -> list[Lock]:
        return []  # counts only add: writers of one bucket wait on its row, if at all

    def on_insert(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        self._add(conn, events, 1)

    def on_delete(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        self._add(conn, events, -1)

    def rebuild(self, conn: Connection) -> None:
        conn.execute(delete(_table))
        bucket = bucket_of(_events.c.occurred_at)
        # models.quarter_of in SQL: bits rather than %, which truncates negative buckets on
        # PostgreSQL. (The masks as SQL text: GROUP BY matches the selected expression only
        # without binds.)
        hour = bucket.op("&")(literal_column(str(-len(QUARTERS))))
        quarter = bucket.op("&")(literal_column(str(len(QUARTERS) - 1)))
        conn.execute(
            insert(_table).from_select(
                ["bucket", "event", "shard", *QUARTERS],
                select(
                    hour,
                    _events.c.event,
                    literal(0),
                    *(func.sum(case((quarter == q, 1), else_=0)) for q in range(len(QUARTERS))),
                ).group_by(hour, _events.c.event),
            )
        )

    def fold_locks(self) -> list[Lock]:
        return []

    def fold(self, conn: Connection, before_bucket: int) -> None:
        dialects.of(conn).fold_totals(conn, _table, _KEYS, QUARTERS, before_bucket)

    @staticmethod
    def _add(conn: Connection, events: Sequence[StoredEvent], sign: int) -> None:
        deltas: dict[tuple[int, str], list[int]] = {}
        for e in events:
            bucket = bucket_of_instant(e.occurred_at)
            quarter = quarter_of(bucket)
            quarters = deltas.setdefault((bucket - quarter, e.event), [0] * len(QUARTERS))
            quarters[quarter] += sign
        shard = shard_of_writer(conn)
        rows = [
            (hour, event, shard, *quarters) for (hour, event), quarters in sorted(deltas.items())
        ]
        if rows:
            dialects.of(conn).add_totals(conn, _table, rows, keys=_KEYS, totals=QUARTERS)
