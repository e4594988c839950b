"""Query plans and timings of GET /metrics and GET /sessions at 1,000,000 events.

    .venv/bin/python bench/query_plans.py [--events 1000000] [--users 10000] [--days 30]
                                          [--runs 5] [--no-postgres] [--no-sqlite]

Generates the events (30 days, 10,000 users, 20 event names, a third of them play/stop; the
same events on every run) into a fresh PostgreSQL database at BENCH_POSTGRES_URL (default the
local server; loaded with COPY) and a fresh SQLite file (executemany in large transactions),
both created with ``alembic upgrade head`` and analysed afterwards (VACUUM ANALYZE / ANALYZE).
Then, for each query, prints the exact SQL that analytics.queries generates, its plan
(PostgreSQL: EXPLAIN (ANALYZE, BUFFERS); SQLite: EXPLAIN QUERY PLAN) and the median time of
``--runs`` calls of the query function (warm cache). Last, on the same data, it undoes one at a
time the choices those queries rely on (counting per date before labelling periods, JIT off on
PostgreSQL, the event name in the play/stop index) and prints what each is worth beside the
floor of a bare count. Both databases are removed at the end. Findings: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import io
import random
import sqlite3
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.compiler import compiles  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402
from sqlalchemy.sql.expression import ClauseElement, Executable  # noqa: E402

from analytics import queries  # noqa: E402
from analytics.db import make_engine  # noqa: E402
from analytics.models import Event  # noqa: E402
from analytics.periods import period_label, utc_date  # noqa: E402
from bench.support import scratch_postgres, scratch_sqlite  # noqa: E402

FIRST_DAY = date(2025, 1, 1)
OTHER_EVENTS = ("pause", "skip", "seek", "like", "share", "search", "view", "click", "scroll",
                "login", "logout", "purchase", "add_to_cart", "checkout", "signup", "error",
                "complete", "volume")
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

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor() as cursor:
            cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
                           "AND indexname NOT IN (SELECT conname FROM pg_constraint)")
            indexes = cursor.fetchall()
            for name, _definition in indexes:
                cursor.execute(f'DROP INDEX "{name}"')
            with cursor.copy("COPY events (id, event, user_id, occurred_at, received_at) "
                             "FROM STDIN") as copy:
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
            cursor.execute("SELECT setval(pg_get_serial_sequence('events', 'id'), "
                           "(SELECT max(id) FROM events))")
            cursor.execute("VACUUM ANALYZE events")


def load_sqlite(url: str, rows, batch: int = 200_000) -> None:
    """executemany in large transactions, in the storage format of models.UTCDateTime, with
    the migrated indexes dropped for the load and created again from their own SQL."""
    path = make_url(url).database
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                           "AND tbl_name = 'events' AND sql IS NOT NULL").fetchall()
    for name, _sql in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    insert = ("INSERT INTO events (id, event, user_id, occurred_at, received_at) "
              "VALUES (?, ?, ?, ?, ?)")
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


class Explain(Executable, ClauseElement):
    """``<prefix> <statement>``, with the statement's parameters bound as usual."""

    inherit_cache = False

    def __init__(self, statement, prefix: str):
        self.statement = statement
        self.prefix = prefix


@compiles(Explain)
def _compile_explain(element, compiler, **kw):
    return f"{element.prefix} {compiler.process(element.statement, **kw)}"


def cases(n_days: int, user_id: str) -> list[tuple[str, callable, callable, dict]]:
    """(name, statement builder, query function, arguments) of each measured query."""
    last_day = FIRST_DAY + timedelta(days=n_days - 1)
    period = {"start": FIRST_DAY, "end": last_day}
    return [
        (f"metrics day, {n_days} days", queries.metrics_statement, queries.metrics,
         {**period, "group_by": "day"}),
        (f"metrics week, {n_days} days", queries.metrics_statement, queries.metrics,
         {**period, "group_by": "week"}),
        (f"metrics month, {n_days} days", queries.metrics_statement, queries.metrics,
         {**period, "group_by": "month"}),
        (f"metrics day, one user, {n_days} days", queries.metrics_statement, queries.metrics,
         {**period, "group_by": "day", "user_id": user_id}),
        (f"sessions day, {n_days} days", queries.sessions_statement, queries.sessions,
         {**period, "group_by": "day"}),
        (f"sessions day, one user, {n_days} days", queries.sessions_statement, queries.sessions,
         {**period, "group_by": "day", "user_id": user_id}),
    ]


def show_sql(session: Session, statement) -> str:
    compiled = statement.compile(dialect=session.get_bind().dialect)
    params = ", ".join(f"{name}={value!r}" for name, value in compiled.params.items())
    return f"{compiled}\n-- parameters: {params}"


def explain(session: Session, statement) -> str:
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(Explain(statement, "EXPLAIN (ANALYZE, BUFFERS)"))
        return "\n".join(row[0] for row in rows)
    rows = list(session.execute(Explain(statement, "EXPLAIN QUERY PLAN")))
    depth = {0: -1}
    lines = []
    for node_id, parent, _unused, detail in rows:
        depth[node_id] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node_id] + detail)
    return "\n".join(lines)


def single_level_metrics(start: date, end: date, group_by: str = "day"):
    """The straightforward form of the metrics query: one GROUP BY (period label, event) over
    the events, with ORDER BY; the baseline for the two-level form analytics.queries uses."""
    events = Event.__table__
    start_at, end_at = queries.utc_bounds(start, end)
    label = period_label(utc_date(events.c.occurred_at), group_by)
    return (select(label.label("date"), events.c.event, func.count())
            .where(events.c.occurred_at >= start_at, events.c.occurred_at < end_at)
            .group_by(label, events.c.event).order_by(label))


def median_of(runs: int, call) -> float:
    call()  # warm the cache
    timings = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        timings.append(time.perf_counter() - began)
    return statistics.median(timings)


def median_seconds(session: Session, function, arguments: dict, runs: int) -> float:
    return median_of(runs, lambda: function(session, **arguments))


def baselines(session: Session, args) -> dict[str, float]:
    """The choices made in analytics.queries, the migrations and analytics.db, undone one at a
    time on the same data: medians of the metrics-day and sessions-day queries."""
    period = {"start": FIRST_DAY, "end": FIRST_DAY + timedelta(days=args.days - 1)}
    is_postgresql = session.get_bind().dialect.name == "postgresql"
    timings = {}

    def metrics_day():
        return queries.metrics(session, **period)

    def sessions_day():
        return queries.sessions(session, **period)

    events = Event.__table__
    start_at, end_at = queries.utc_bounds(**period)
    count_only = select(func.count()).where(events.c.occurred_at >= start_at,
                                           events.c.occurred_at < end_at)
    timings["floor: count(*) of the range, no grouping"] = median_of(
        args.runs, lambda: session.execute(count_only).scalar())
    timings["metrics day: as shipped"] = median_of(args.runs, metrics_day)
    baseline = single_level_metrics(**period)
    print(f"\n--- baseline: metrics day with one GROUP BY (label, event) and ORDER BY\n"
          f"{show_sql(session, baseline)}\n\n{explain(session, baseline)}")
    timings["metrics day: single GROUP BY (label, event) + ORDER BY"] = median_of(
        args.runs, lambda: session.execute(baseline).all())
    timings["sessions day: as shipped"] = median_of(args.runs, sessions_day)
    if is_postgresql:
        session.execute(text("SET jit = on"))
        timings["metrics day: jit = on"] = median_of(args.runs, metrics_day)
        timings["sessions day: jit = on"] = median_of(args.runs, sessions_day)
        session.execute(text("SET jit = off"))
    # The play/stop index as migration 0001 created it: without the event name.
    session.execute(text("DROP INDEX ix_events_play_stop"))
    session.execute(text("CREATE INDEX ix_events_play_stop ON events (user_id, occurred_at, id) "
                         "WHERE event IN ('play', 'stop')"))
    session.execute(text("ANALYZE events" if is_postgresql else "ANALYZE"))
    session.commit()
    statement = queries.sessions_statement(**period)
    print(f"\n--- baseline: sessions day with the play/stop index without event\n"
          f"{explain(session, statement)}")
    timings["sessions day: play/stop index without event"] = median_of(args.runs, sessions_day)
    return timings


def measure(name: str, url: str, args) -> tuple[dict[str, float], dict[str, float]]:
    engine = make_engine(url, statement_timeout_ms=0)
    results = {}
    print(f"\n{'=' * 100}\n{name}\n{'=' * 100}")
    with Session(engine) as session:
        if engine.dialect.name == "postgresql":
            print(session.execute(text("SELECT version()")).scalar())
            for setting in ("work_mem", "shared_buffers", "jit"):
                print(f"{setting} = {session.execute(text(f'SHOW {setting}')).scalar()}")
        else:
            print(f"SQLite {sqlite3.sqlite_version}")
        for title, build, function, arguments in cases(args.days, "user00042"):
            statement = build(**arguments)
            print(f"\n--- {title} ({name})\n{show_sql(session, statement)}\n")
            print(explain(session, statement))
            results[title] = median_seconds(session, function, arguments, args.runs)
            rows = function(session, **arguments)
            print(f"\n{len(rows)} rows; median of {args.runs}: {results[title] * 1000:.1f} ms")
            session.rollback()
        compared = baselines(session, args)
    engine.dispose()
    return results, compared


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    backends = list(results)
    rows = list(dict.fromkeys(row for values in results.values() for row in values))
    print(f"\n{title}\n")
    print("| query | " + " | ".join(backends) + " |")
    print("| --- |" + " ---: |" * len(backends))
    for row in rows:
        cells = " | ".join(f"{results[b][row] * 1000:.0f}" if row in results[b] else "n/a"
                           for b in backends)
        print(f"| {row} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    compared: dict[str, dict[str, float]] = {}
    rows = lambda: generate(args.events, args.users, args.days)  # noqa: E731
    backends = [("PostgreSQL", scratch_postgres, load_postgres, args.no_postgres),
                ("SQLite", scratch_sqlite, load_sqlite, args.no_sqlite)]
    for name, scratch, load, skip in backends:
        if skip:
            continue
        with scratch() as url:
            began = time.perf_counter()
            load(url, rows())
            print(f"{name}: {args.events} events loaded and analysed in "
                  f"{time.perf_counter() - began:.1f} s")
            results[name], compared[name] = measure(name, url, args)

    scale = f"{args.events} events, {args.users} users, {args.days} days"
    print_table(f"Median of {args.runs} runs (ms), {scale}", results)
    print_table(f"What each choice is worth: median of {args.runs} runs (ms), {scale}", compared)


if __name__ == "__main__":
    main()
