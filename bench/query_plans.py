"""Query plans and timings of the statements behind GET /metrics and GET /sessions.

    .venv/bin/python bench/query_plans.py [--events 1000000] [--users 100000] [--days 30]
                                          [--runs 5] [--no-postgres] [--no-sqlite]

Generates the events with bench/data.py (the same as bench/scale.py for the same arguments)
into a fresh PostgreSQL database at BENCH_POSTGRES_URL and a fresh SQLite file, both created by
``alembic upgrade head``, rebuilds the aggregates (``writer.rebuild_aggregates``) and analyses.
Then, for each query (all users over the whole range unless said otherwise), prints the
statement that ``analytics.reports`` runs with its parameters, its plan (PostgreSQL:
``EXPLAIN (ANALYZE, BUFFERS)``; SQLite: ``EXPLAIN QUERY PLAN``), how many rows it returns,
and three medians of ``--runs`` calls (warm cache): the statement alone, ``reports.metrics`` /
``reports.sessions`` (the statement, the periods and the labelling in Python), and the whole
HTTP answer in-process (``app.test_client()``: Flask, validation and JSON too). So the table
splits a request's time between the database, the report's Python and the web layer.
Findings: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.compiler import compiles  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402
from sqlalchemy.sql.expression import ClauseElement, Executable  # noqa: E402

from analytics import reports, writer  # noqa: E402
from analytics.db import make_engine  # noqa: E402
from analytics.periods import WEEKDAYS  # noqa: E402
from bench.data import FIRST_DAY, generate, load_postgres, load_sqlite  # noqa: E402
from bench.support import scratch_postgres, scratch_sqlite  # noqa: E402


class Explain(Executable, ClauseElement):
    """``<prefix> <statement>``, with the statement's parameters bound as usual."""

    inherit_cache = False

    def __init__(self, statement, prefix: str):
        self.statement = statement
        self.prefix = prefix


@compiles(Explain)
def _compile_explain(element, compiler, **kw):
    return f"{element.prefix} {compiler.process(element.statement, **kw)}"


def cases(args) -> list[tuple[str, str, dict]]:
    """(title, endpoint, query arguments)."""
    period = {"start": FIRST_DAY, "end": FIRST_DAY + timedelta(days=args.days - 1)}
    return [
        (
            "metrics hour, Kathmandu",
            "/metrics",
            {**period, "group_by": "hour", "tz": "Asia/Kathmandu"},
        ),
        ("metrics day, UTC", "/metrics", {**period, "group_by": "day"}),
        (
            "metrics day, Los Angeles, event=play",
            "/metrics",
            {**period, "group_by": "day", "tz": "America/Los_Angeles", "events": ("play",)},
        ),
        (
            "metrics week (sunday), Kathmandu",
            "/metrics",
            {**period, "group_by": "week", "tz": "Asia/Kathmandu", "week_start": 6},
        ),
        ("metrics month, UTC", "/metrics", {**period, "group_by": "month"}),
        (
            "sessions hour, Los Angeles",
            "/sessions",
            {**period, "group_by": "hour", "tz": "America/Los_Angeles"},
        ),
        (
            "sessions day, Kathmandu",
            "/sessions",
            {**period, "group_by": "day", "tz": "Asia/Kathmandu"},
        ),
        ("metrics day, one user", "/metrics", {**period, "user_id": "user00042"}),
        ("sessions day, one user", "/sessions", {**period, "user_id": "user00042"}),
    ]


def statement_of(session: Session, endpoint: str, query: reports.PeriodQuery):
    """The statement and parameters that reports.metrics / reports.sessions execute."""
    return reports.statement_for(session, query, endpoint, reports.query_periods(session, query))


def explain(session: Session, statement, parameters) -> str:
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(Explain(statement, "EXPLAIN (ANALYZE, BUFFERS)"), parameters)
        return "\n".join(row[0] for row in rows)
    rows = list(session.execute(Explain(statement, "EXPLAIN QUERY PLAN"), parameters))
    depth = {0: -1}
    lines = []
    for node_id, parent, _unused, detail in rows:
        depth[node_id] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node_id] + detail)
    return "\n".join(lines)


def median_ms(runs: int, call) -> float:
    call()  # warm the caches
    timings = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        timings.append(time.perf_counter() - began)
    return statistics.median(timings) * 1000


def query_string(arguments: dict) -> dict:
    params = {
        "start_date": arguments["start"].isoformat(),
        "end_date": arguments["end"].isoformat(),
        "group_by": arguments.get("group_by", "day"),
        "tz": arguments.get("tz", "UTC"),
        "week_start": WEEKDAYS[arguments.get("week_start", 0)],
    }
    if "user_id" in arguments:
        params["user_id"] = arguments["user_id"]
    if arguments.get("events"):
        params["event"] = list(arguments["events"])
    return params


def measure(name: str, url: str, args) -> dict[str, tuple]:
    os.environ["DATABASE_URL"] = url
    from analytics import create_app  # noqa: PLC0415  (reads DATABASE_URL)

    client = create_app().test_client()
    engine = make_engine(url, statement_timeout_ms=0)
    results = {}
    print(f"\n{'=' * 100}\n{name}\n{'=' * 100}")
    with Session(engine) as session:
        if engine.dialect.name == "postgresql":
            print(session.execute(text("SELECT version()")).scalar())
        else:
            print(f"SQLite {sqlite3.sqlite_version}")
        for title, endpoint, arguments in cases(args):
            query = reports.PeriodQuery(**arguments)
            statement, parameters = statement_of(session, endpoint, query)
            compiled = statement.compile(dialect=engine.dialect)
            shown = {
                k: (f"<{len(v)} bounds>" if k == "bounds" else v) for k, v in parameters.items()
            }
            print(f"\n--- {title} ({name})\n{compiled}\n-- parameters: {shown}\n")
            print(explain(session, statement, parameters))
            n_rows = len(session.execute(statement, parameters).all())
            report = reports.metrics if endpoint == "/metrics" else reports.sessions
            sql_ms = median_ms(
                args.runs, lambda s=statement, p=parameters: session.execute(s, p).all()
            )
            report_ms = median_ms(args.runs, lambda r=report, q=query: r(session, q))
            params = query_string(arguments)
            http_ms = median_ms(
                args.runs, lambda e=endpoint, p=params: client.get(e, query_string=p)
            )
            results[title] = (n_rows, sql_ms, report_ms, http_ms)
            print(
                f"\n{n_rows} rows; medians of {args.runs}: statement {sql_ms:.1f} ms, "
                f"report {report_ms:.1f} ms, in-process HTTP {http_ms:.1f} ms",
                flush=True,
            )
            session.rollback()
    engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, tuple]] = {}
    backends = [
        ("PostgreSQL", scratch_postgres, load_postgres, args.no_postgres),
        ("SQLite", scratch_sqlite, load_sqlite, args.no_sqlite),
    ]
    for name, scratch, load, skip in backends:
        if skip:
            continue
        with scratch() as url:
            began = time.perf_counter()
            load(url, generate(args.events, args.users, args.days))
            engine = make_engine(url, statement_timeout_ms=0)
            writer.rebuild_aggregates(engine)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE" if name == "PostgreSQL" else "ANALYZE")
            engine.dispose()
            print(
                f"{name}: {args.events} events loaded, aggregated and analysed in "
                f"{time.perf_counter() - began:.1f} s"
            )
            results[name] = measure(name, url, args)

    print(
        f"\nMedians of {args.runs} runs (ms), {args.events} events, {args.users} users, "
        f"{args.days} days\n"
    )
    print(
        "| query | "
        + " | ".join(
            f"{b} rows | {b} statement | {b} report | {b} in-process HTTP" for b in results
        )
        + " |"
    )
    print("| --- |" + " ---: |" * (4 * len(results)))
    for title in next(iter(results.values())):
        cells = []
        for backend in results:
            n, sql_ms, report_ms, http_ms = results[backend][title]
            cells += [str(n), f"{sql_ms:.1f}", f"{report_ms:.1f}", f"{http_ms:.1f}"]
        print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
