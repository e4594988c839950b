"""The events of the query benchmarks (bench/scale.py, bench/query_plans.py): generated the same
for the same arguments, and loaded into a migrated database faster than the API would."""

from __future__ import annotations

import io
import random
import sqlite3
from datetime import date, timedelta

from sqlalchemy.engine import make_url

from bench.support import driver_conninfo

FIRST_DAY = date(2025, 1, 1)
OTHER_EVENTS = (
    "pause",
    "skip",
    "seek",
    "like",
    "share",
    "search",
    "view",
    "click",
    "scroll",
    "login",
    "logout",
    "purchase",
    "add_to_cart",
    "checkout",
    "signup",
    "error",
    "complete",
    "volume",
)
SEED = 20250101


def generate(n_events: int, n_users: int, n_days: int):
    """(id, event, user_id, occurred_at) tuples in arrival order, which is nearly time order.

    occurred_at is UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``. About one event in three is a play
    or a stop, in equal numbers; users are uniform.
    """
    rng = random.Random(SEED)
    span = n_days * 86_400_000_000
    offsets = sorted(int(rng.random() * span) for _ in range(n_events))
    names = ("play", "stop") + OTHER_EVENTS
    # play and stop 1/6 each, the 18 other names share the remaining 2/3.
    weights = [1 / 6, 1 / 6] + [(2 / 3) / len(OTHER_EVENTS)] * len(OTHER_EVENTS)
    events = rng.choices(names, weights=weights, k=n_events)
    users = rng.choices([f"user{n:05d}" for n in range(n_users)], k=n_events)
    days = [(FIRST_DAY + timedelta(days=n)).isoformat() for n in range(n_days)]
    for index, offset in enumerate(offsets):
        seconds, microseconds = divmod(offset, 1_000_000)
        day, seconds = divmod(seconds, 86_400)
        hours, seconds = divmod(seconds, 3600)
        minutes, seconds = divmod(seconds, 60)
        stamp = f"{days[day]} {hours:02d}:{minutes:02d}:{seconds:02d}.{microseconds:06d}"
        yield index + 1, events[index], users[index], stamp


def load_postgres(url: str, rows) -> None:
    """COPY the rows in, then VACUUM ANALYZE (fresh statistics and visibility map).

    The migrated indexes that back no constraint are dropped for the load and created again
    from their own definitions afterwards: one sort per index instead of a million insertions.
    """
    import psycopg

    conninfo = driver_conninfo(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
            indexes = cursor.fetchall()
            for name, _definition in indexes:
                cursor.execute(f'DROP INDEX "{name}"')
            with cursor.copy(
                "COPY events (id, event, user_id, occurred_at, received_at) FROM STDIN"
            ) as copy:
                buffer = io.StringIO()
                for count, (event_id, event, user_id, occurred_at) in enumerate(rows, 1):
                    stamp = occurred_at + "+00"
                    buffer.write(f"{event_id}\t{event}\t{user_id}\t{stamp}\t{stamp}\n")
                    if count % 50_000 == 0:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
            for _name, definition in indexes:
                cursor.execute(definition)
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('events', 'id'), "
                "(SELECT max(id) FROM events))"
            )
            cursor.execute("VACUUM ANALYZE events")


def load_sqlite(url: str, rows, batch: int = 200_000) -> None:
    """executemany in large transactions, in the storage format of models.UTCDateTime, with
    the migrated indexes dropped for the load and created again from their own SQL."""
    path = make_url(url).database
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
        "AND tbl_name = 'events' AND sql IS NOT NULL"
    ).fetchall()
    for name, _sql in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    insert = (
        "INSERT INTO events (id, event, user_id, occurred_at, received_at) VALUES (?, ?, ?, ?, ?)"
    )
    pending = []
    for event_id, event, user_id, occurred_at in rows:
        pending.append((event_id, event, user_id, occurred_at, occurred_at))
        if len(pending) == batch:
            conn.execute("BEGIN")
            conn.executemany(insert, pending)
            conn.execute("COMMIT")
            pending = []
    if pending:
        conn.execute("BEGIN")
        conn.executemany(insert, pending)
        conn.execute("COMMIT")
    for _name, sql in indexes:
        conn.execute(sql)
    conn.execute("ANALYZE")
    conn.close()
