"""GET /active-users at scale through HTTP, beside COUNT(DISTINCT user_id) over the raw events.

    .venv/bin/python bench/active_users.py [--events 10000000] [--small 1000000]
                                           [--users 100000] [--days 30] [--runs 5]
                                           [--no-sqlite] [--no-postgres]
                                           [--database-url URL]

For each data set (PostgreSQL at ``--small`` and ``--events`` events, SQLite at ``--small``),
loaded as bench/scale.py loads it (the same generated events, aggregates rebuilt), and all
served by gunicorn at once: for group_by day, week and month in UTC and Asia/Kathmandu over the
whole range (and day in UTC with ``event=play``, which counts from the events), the median of
``--runs`` HTTP requests after a warm-up, each request sent to every data set in turn (so that
growth compares the same minutes of this shared machine), then the plain statement:
``COUNT(DISTINCT user_id)`` grouped by the local period on PostgreSQL (``occurred_at AT TIME
ZONE tz``), and on SQLite, which has no time zones, the range's raw rows grouped into sets by
Python with zoneinfo. The plain answer is compared with the API's (OK or MISMATCH). Prints the
table, the growth from the small to the large PostgreSQL set, and whether the targets are met.
``--database-url``: measure only that PostgreSQL database, as it is (loaded before, e.g. by
bench/dashboard.py, with ``--small`` events). Findings: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analytics.db import make_engine  # noqa: E402
from analytics.models import sqlite_timestamp  # noqa: E402
from bench.data import FIRST_DAY  # noqa: E402
from bench.scale import (
    PG_LABEL,
    Result,
    http_get,
    load,
    local_labeller,
    span,  # noqa: E402
    utc_range,
)
from bench.support import gunicorn, scratch_postgres, scratch_sqlite  # noqa: E402

TARGET_MS = 100
TARGET_GROWTH = 1.5


@dataclass(frozen=True)
class Case:
    tz: str
    group_by: str
    events: tuple[str, ...] = ()
    week_start: str = "monday"

    @property
    def name(self) -> str:
        return f"{self.group_by} {self.tz}" + (
            f" event={'+'.join(self.events)}" if self.events else ""
        )


CASES = [
    Case(tz, group_by) for tz in ("UTC", "Asia/Kathmandu") for group_by in ("day", "week", "month")
] + [Case("UTC", "day", ("play",))]


def plain_answer(conn, backend: str, case: Case, args) -> list[dict]:
    lo, hi = utc_range(args, case.tz)
    where = " AND event IN ('play')" if case.events else ""
    if backend == "PostgreSQL":
        rows = conn.execute(
            text(
                f"SELECT {PG_LABEL[case.group_by]}, count(DISTINCT user_id) FROM ("
                f"  SELECT occurred_at AT TIME ZONE :tz AS local_at, user_id FROM events"
                f"  WHERE occurred_at >= :lo AND occurred_at < :hi{where}) AS e GROUP BY 1"
            ),
            {"tz": case.tz, "lo": lo, "hi": hi, "week_start": 0},
        ).all()
        return [{"date": label, "users": n} for label, n in sorted(rows)]
    label = local_labeller(case)
    users: dict[str, set] = defaultdict(set)
    for stamp, user_id in conn.execute(
        text(
            f"SELECT occurred_at, user_id FROM events "
            f"WHERE occurred_at >= :lo AND occurred_at < :hi{where}"
        ),
        {"lo": sqlite_timestamp(lo), "hi": sqlite_timestamp(hi)},
    ):
        users[label(stamp)[0]].add(user_id)
    return [{"date": key, "users": len(found)} for key, found in sorted(users.items())]


def measure(targets: list[tuple[str, str, Result]], args) -> None:
    """Serve every (backend, url, result) data set at once and, query by query, send each
    request to them in turn, so that growth compares requests made over the same seconds."""
    start, end = span(args)
    with contextlib.ExitStack() as stack:
        served = []
        for backend, url, result in targets:
            base, _master = stack.enter_context(gunicorn("wsgi:app", env={"DATABASE_URL": url}))
            engine = make_engine(url, statement_timeout_ms=0)
            stack.callback(engine.dispose)
            served.append((backend, base, engine, result))
        for case in CASES:
            params = [
                ("start_date", start.isoformat()),
                ("end_date", end.isoformat()),
                ("group_by", case.group_by),
                ("tz", case.tz),
            ]
            params += [("event", name) for name in case.events]
            timings: list[list[float]] = [[] for _ in served]
            answers: list[list] = [[] for _ in served]
            for _backend, base, _engine, _result in served:
                http_get(base, "/active-users", params)  # warm-up
            for _ in range(args.runs):
                for i, (_backend, base, _engine, _result) in enumerate(served):
                    elapsed, body = http_get(base, "/active-users", params)
                    timings[i].append(elapsed)
                    answers[i] = body["data"]
            # The plain statements after every request, so that their scans do not evict the
            # API's pages in between.
            for i, (backend, _base, engine, result) in enumerate(served):
                began = time.perf_counter()
                with engine.connect() as conn:
                    expected = plain_answer(conn, backend, case, args)
                result.sql_ms[case.name] = (time.perf_counter() - began) * 1000
                result.api_ms[case.name] = statistics.median(timings[i]) * 1000
                result.answer[case.name] = (
                    "OK"
                    if answers[i] == expected
                    else f"MISMATCH api={answers[i][:3]} plain={expected[:3]}"
                )
                print(
                    f"  {result.label:16} {case.name:32} API {result.api_ms[case.name]:8.1f} ms"
                    f"  plain {result.sql_ms[case.name]:9.1f} ms  {result.answer[case.name]}",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    plan = []
    if args.database_url:
        plan.append(("PostgreSQL", lambda: contextlib.nullcontext(args.database_url), args.small))
    elif not args.no_sqlite:
        plan.append(("SQLite", scratch_sqlite, args.small))
    if not args.no_postgres and not args.database_url:
        plan += [
            ("PostgreSQL", scratch_postgres, args.small),
            ("PostgreSQL", scratch_postgres, args.events),
        ]
    print(
        f"{args.users:,} users, {args.days} days from {FIRST_DAY}; SQLite "
        f"{sqlite3.sqlite_version}; {args.runs} HTTP runs (median) per query",
        flush=True,
    )
    results = []
    with contextlib.ExitStack() as stack:
        targets = []
        for backend, scratch, n_events in plan:
            result = Result(backend, n_events)
            url = stack.enter_context(scratch())
            if not args.database_url:
                load(backend, url, args, n_events, result)
            targets.append((backend, url, result))
            results.append(result)
        measure(targets, args)

    print("\n| data set | query | API ms | COUNT(DISTINCT) ms | plain / API | answer |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for r in results:
        for case in CASES:
            api, sql = r.api_ms[case.name], r.sql_ms[case.name]
            print(
                f"| {r.label} | {case.name} | {api:.1f} | {sql:.0f} | {sql / api:.0f}x | "
                f"{r.answer[case.name]} |"
            )
    failed = [
        f"{r.label} {name}: {r.answer[name]}"
        for r in results
        for name in r.answer
        if r.answer[name] != "OK"
    ]
    slow = [
        f"{r.label} {case.name}: {r.api_ms[case.name]:.1f} ms"
        for r in results
        for case in CASES
        if not case.events and r.api_ms[case.name] > TARGET_MS
    ]
    postgres = [r for r in results if r.backend == "PostgreSQL"]
    if len(postgres) == 2 and postgres[0].events != postgres[1].events:
        small, big = postgres
        print("\ngrowth from", small.label, "to", big.label)
        for case in CASES:
            growth = big.api_ms[case.name] / small.api_ms[case.name]
            print(f"  {case.name:32} {growth:.2f}x")
            if not case.events and growth > TARGET_GROWTH:
                slow.append(f"growth {case.name}: {growth:.2f}x")
    print("\nanswers:", "all equal to the plain SQL's" if not failed else failed)
    print(
        f"targets (≤ {TARGET_MS} ms median without event, growth ≤ {TARGET_GROWTH}x):",
        "met" if not slow else f"missed: {slow}",
    )


if __name__ == "__main__":
    main()
