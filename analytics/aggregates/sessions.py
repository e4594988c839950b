"""Play/stop sessions, one row each, and their totals per quarter-hour bucket of the play.

The pairing rule (API.md, GET /sessions): a play and a stop make a session when the stop is
the user's next play-or-stop event after the play, by timestamp and then id. ``pairs`` is the
one place that rule is written; inserts, deletes and rebuild all go through it.

After events of a user change between timestamps lo and hi, only pairs whose play lies in the
*repair window* can change: from the user's last play/stop strictly before lo (or lo) up to
the first one strictly after hi (or without end). The window's sessions are deleted and paired
again from the events; the differences go to the per-bucket totals. See docs/architecture.md.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, delete, func, insert, literal, select
from sqlalchemy.sql.selectable import FromClause

from analytics import dialects
from analytics.aggregates import shard_of_writer
from analytics.dialects import Lock, bucket_of, microseconds_between
from analytics.models import (
    PLAY_OR_STOP,
    Event,
    PlayStopSession,
    SessionBucket,
    UTCDateTime,
    is_play_or_stop,
    table_of,
)
from analytics.rows import StoredEvent

_events = table_of(Event)
_sessions = table_of(PlayStopSession)
_totals = table_of(SessionBucket)
_TOTALS = ("sessions", "total_us")
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)
_COLUMNS = ["play_id", "stop_id", "user_id", "play_at", "bucket", "duration_us"]
LOCK_SPACE = 1  # of the users' locks (aggregates.Lock)


def pairs(windows: FromClause | None = None) -> Select[Any]:
    """The sessions as rows of _COLUMNS: of every user, or (``windows``: a selectable of
    user_id, lo, hi) only those whose play lies in [lo, hi) of its user's window, read from
    its events in [lo, hi]."""
    e = _events
    by, order = e.c.user_id, (e.c.occurred_at, e.c.id)
    events = select(
        e.c.id,
        e.c.user_id,
        e.c.event,
        e.c.occurred_at,
        func.lead(e.c.id).over(partition_by=by, order_by=order).label("next_id"),
        func.lead(e.c.event).over(partition_by=by, order_by=order).label("next_event"),
        func.lead(e.c.occurred_at).over(partition_by=by, order_by=order).label("next_at"),
    ).where(is_play_or_stop(e))
    if windows is not None:
        # The window's last event is read too: it may be the stop of the last play inside.
        events = events.add_columns(windows.c.hi).join(
            windows,
            and_(
                e.c.user_id == windows.c.user_id,
                e.c.occurred_at >= windows.c.lo,
                e.c.occurred_at <= windows.c.hi,
            ),
        )
    sequence = events.subquery("sequence")
    s = sequence.c
    found = select(
        s.id,
        s.next_id,
        s.user_id,
        s.occurred_at,
        bucket_of(s.occurred_at),
        microseconds_between(s.occurred_at, s.next_at),
    ).where(s.event == "play", s.next_event == "stop")
    if windows is not None:
        found = found.where(s.occurred_at < s.hi)
    return found


class Sessions:
    name = "sessions"
    tables: tuple[str, ...] = ("sessions", "session_buckets")

    def locks(self, events: Sequence[StoredEvent], deleting: bool) -> list[Lock]:
        """Each user whose play/stop events change, exclusively: two transactions never
        repair one user's sessions at once. Ascending, one global order, so that two writers
        never wait for each other in a cycle."""
        users = {e.user_id for e in events if e.event in PLAY_OR_STOP}
        keys = sorted({zlib.crc32(user_id.encode("utf-8")) for user_id in users})
        return [Lock(LOCK_SPACE, key, exclusive=True) for key in keys]

    def on_insert(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        self._repair(conn, events)

    def on_delete(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        self._repair(conn, events)

    def rebuild(self, conn: Connection) -> None:
        conn.execute(delete(_totals))
        conn.execute(delete(_sessions))
        conn.execute(insert(_sessions).from_select(_COLUMNS, pairs()))
        conn.execute(
            insert(_totals).from_select(
                ["bucket", "shard", "sessions", "total_us"],
                select(
                    _sessions.c.bucket, literal(0), func.count(), func.sum(_sessions.c.duration_us)
                ).group_by(_sessions.c.bucket),
            )
        )

    def _repair(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        spans: dict[str, list] = {}
        for e in events:
            if e.event in PLAY_OR_STOP:
                span = spans.setdefault(e.user_id, [e.occurred_at, e.occurred_at])
                span[0], span[1] = min(span[0], e.occurred_at), max(span[1], e.occurred_at)
        if not spans:
            return
        dialect = dialects.of(conn)
        statements = _statements(dialect)
        parameters = {
            "spans": dialect.spans_json(
                [(user, lo, hi) for user, (lo, hi) in sorted(spans.items())]
            )
        }
        deltas: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for sign, statement in ((-1, statements.delete), (1, statements.insert)):
            for bucket, duration in conn.execute(statement, parameters):
                deltas[bucket][0] += sign
                deltas[bucket][1] += sign * duration
        shard = shard_of_writer(conn)
        rows = [
            (bucket, shard, n, total) for bucket, (n, total) in sorted(deltas.items()) if n or total
        ]
        if rows:
            dialect.add_totals(conn, _totals, rows, keys=("bucket", "shard"), totals=_TOTALS)

    def fold_locks(self) -> list[Lock]:
        return []

    def fold(self, conn: Connection, before_bucket: int) -> None:
        dialects.of(conn).fold_totals(conn, _totals, ("bucket", "shard"), _TOTALS, before_bucket)


class _Statements:
    """The repair's two statements for one database (its JSON rows are read its own way).

    Both start from the changed span of each user (``:spans``) and work out its repair window
    in the database, so the windows never travel to Python and back. The CTE is
    materialised: each window's probes run once, not again for every event joined to it.
    """

    def __init__(self, dialect: dialects.Dialect) -> None:
        e = _events
        spans = dialect.spans_source()

        def neighbour(compare: Any, order: Any) -> Any:
            return (
                select(e.c.occurred_at)
                .where(e.c.user_id == spans.c.user_id, is_play_or_stop(e), compare(e.c.occurred_at))
                .order_by(order(e.c.occurred_at))
                .limit(1)
                .scalar_subquery()
            )

        before = neighbour(lambda at: at < spans.c.lo, lambda at: at.desc())
        after = neighbour(lambda at: at > spans.c.hi, lambda at: at.asc())
        # A window without end ends at the end of time: both bounds are then index bounds.
        windows = (
            select(
                spans.c.user_id,
                func.coalesce(before, spans.c.lo).label("lo"),
                func.coalesce(after, literal(_END_OF_TIME, UTCDateTime())).label("hi"),
            )
            .cte("windows")
            .prefix_with("MATERIALIZED")
        )
        s, doomed = _sessions, _sessions.alias("doomed")
        self.delete = (
            delete(s)
            .where(
                s.c.play_id.in_(
                    select(doomed.c.play_id)
                    .select_from(windows)
                    .join(
                        doomed,
                        and_(
                            doomed.c.user_id == windows.c.user_id,
                            doomed.c.play_at >= windows.c.lo,
                            doomed.c.play_at < windows.c.hi,
                        ),
                    )
                )
            )
            .returning(s.c.bucket, s.c.duration_us)
        )
        self.insert = (
            insert(s).from_select(_COLUMNS, pairs(windows)).returning(s.c.bucket, s.c.duration_us)
        )


_STATEMENTS: dict[str, _Statements] = {}


def _statements(dialect: dialects.Dialect) -> _Statements:
    if dialect.name not in _STATEMENTS:
        _STATEMENTS[dialect.name] = _Statements(dialect)
    return _STATEMENTS[dialect.name]
