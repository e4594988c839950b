"""GET /metrics and GET /sessions at scale through HTTP, against the plain SQL over raw events.

    .venv/bin/python bench/scale.py [--events 10000000] [--small 1000000] [--users 100000]
                                    [--days 30] [--runs 7] [--sql-runs 3] [--duration 8]
                                    [--connections 16] [--workers N]
                                    [--no-sqlite] [--no-postgres] [--no-track] [--no-purge]
                                    [--purge-batch-size N]

For each data set (PostgreSQL at ``--events`` and at ``--small`` events, SQLite at ``--small``
only): generates the events with bench/query_plans.py's generator (``--days`` days from
2025-01-01, ``--users`` users, 20 event names, a third of them play/stop; the same events for
the same arguments), loads them into a fresh database created by ``alembic upgrade head``
(PostgreSQL: COPY; SQLite: executemany; secondary indexes built after the load), recomputes the
pre-aggregated tables with ``rollups.rebuild`` in one transaction and runs ANALYZE. Then, with
gunicorn serving ``wsgi:app`` on that database (the project's gunicorn.conf.py), for each query
(the whole range, all users or one typical user: the first with at least the average number of
events and a session):

- the median of ``--runs`` sequential HTTP requests after a warm-up (the API: pre-aggregated
  counts for all users, the raw statements with an index for one user);
- the median of ``--sql-runs`` executions of the plain SQL over the raw events
  (``queries.metrics_statement`` / ``queries.sessions_statement``) on an engine made by
  ``analytics.db.make_engine``, after one execution whose rows are compared with the HTTP
  answer (counts for /metrics; sessionCount, totalDuration and averageDuration in seconds
  rounded half up for /sessions): OK or MISMATCH;
- then single-event POST /track with wrk on the same server, and right after it the trivial
  Flask endpoint (bench/track_http.py, the framework ceiling), and the largest worker RSS seen;
- then the purge of the first day of events (``retention.purge_expired``, as the ``purge``
  command runs it, in batches of ``--purge-batch-size``) while wrk keeps posting single events in back-to-back
  runs of ``--duration`` seconds: the purge's rate, and the worst POST /track p99 of those runs
  beside the p99 measured without a purge just before; afterwards the all-users answers are
  compared with the plain SQL again (purged events must leave the aggregates).

Prints one table (medians in ms, speed-ups, the growth from the small to the large data set on
PostgreSQL, ingest and memory) and whether each target is met. Databases are removed at the end.
Findings: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sqlite3
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from analytics import queries, retention, rollups  # noqa: E402
from analytics.db import make_engine  # noqa: E402
from bench.query_plans import FIRST_DAY, generate, load_postgres, load_sqlite  # noqa: E402
from bench.support import gunicorn, scratch_postgres, scratch_sqlite, worker_rss_mb  # noqa: E402
from bench.track_http import measure as measure_wrk, run_wrk  # noqa: E402

MICROSECONDS = 1_000_000

# Targets: all-users /metrics, one user, all-users /sessions, growth, ingest share, RSS.
METRICS_ALL_MS, ONE_USER_MS, SESSIONS_ALL_MS = 50, 20, 100
GROWTH_MAX, TRACK_SHARE_MIN, RSS_MAX_MB = 1.5, 0.5, 150
PURGE_P99_MAX = 2.0  # ingest p99 during a purge, as a multiple of the p99 without one


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # /metrics or /sessions
    group_by: str
    all_users: bool = True


CASES = (
    Case("/metrics day, all users", "/metrics", "day"),
    Case("/metrics week, all users", "/metrics", "week"),
    Case("/metrics month, all users", "/metrics", "month"),
    Case("/metrics day, one user", "/metrics", "day", all_users=False),
    Case("/sessions day, all users", "/sessions", "day"),
    Case("/sessions week, all users", "/sessions", "week"),
    Case("/sessions day, one user", "/sessions", "day", all_users=False),
)


@dataclass
class Result:
    """What was measured on one data set."""

    backend: str
    events: int
    load_s: float = 0.0
    rebuild_s: float = 0.0
    api_ms: dict = field(default_factory=dict)
    sql_ms: dict = field(default_factory=dict)
    answer: dict = field(default_factory=dict)  # case name -> "OK" / "MISMATCH ..."
    track: dict | None = None
    trivial: dict | None = None
    rss_mb: float = 0.0
    user_id: str = ""
    purge: dict | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {millions(self.events)}"


def millions(n: int) -> str:
    return f"{n / 1_000_000:g}M" if n >= 1_000_000 else f"{n / 1000:g}k"


# --- data --------------------------------------------------------------------------------------

def load(backend: str, url: str, args, n_events: int, result: Result) -> None:
    """Load generated events, then rebuild the pre-aggregated tables in one transaction and
    ANALYZE."""
    rows = generate(n_events, args.users, args.days)
    began = time.perf_counter()
    (load_postgres if backend == "PostgreSQL" else load_sqlite)(url, rows)
    result.load_s = time.perf_counter() - began
    engine = make_engine(url, statement_timeout_ms=0)
    began = time.perf_counter()
    with engine.begin() as conn:
        rollups.rebuild(conn)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    result.rebuild_s = time.perf_counter() - began
    engine.dispose()
    print(f"{result.label}: {n_events:,} events loaded in {result.load_s:.0f} s, "
          f"rollups rebuilt and analysed in {result.rebuild_s:.0f} s", flush=True)


# --- one query, through HTTP and as plain SQL --------------------------------------------------

def period(args) -> dict:
    return {"start": FIRST_DAY, "end": FIRST_DAY + timedelta(days=args.days - 1)}


def http_get(base: str, path: str, params: dict) -> tuple[float, dict]:
    """Seconds until the whole body of one GET was read, and the decoded body."""
    parts = urlsplit(base)
    began = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request("GET", f"{path}?{urlencode(params)}")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - began
    if response.status != 200:
        raise RuntimeError(f"GET {path} {params}: {response.status} {body[:300]!r}")
    return elapsed, json.loads(body)


def expected_answer(case: Case, rows) -> list[dict]:
    """The API's data array computed from the plain SQL's rows, by the contract's rules."""
    if case.path == "/metrics":
        periods: dict[str, dict] = {}
        for label, event, count in rows:
            periods.setdefault(str(label), {"date": str(label)})[event] = int(count)
        return [periods[label] for label in sorted(periods)]
    answer = []
    for label, count, total in rows:
        count, total = int(count), int(total)
        answer.append({
            "date": str(label),
            "sessionCount": count,
            # Whole seconds, halves rounded up, in integers (exact).
            "totalDuration": (2 * total + MICROSECONDS) // (2 * MICROSECONDS),
            "averageDuration": (2 * total + count * MICROSECONDS) // (2 * count * MICROSECONDS),
        })
    return sorted(answer, key=lambda row: row["date"])


def compare(expected: list[dict], actual: list[dict]) -> str:
    if expected == actual:
        return "OK"
    by_date = {row["date"]: row for row in actual}
    for row in expected:
        if by_date.get(row["date"]) != row:
            return f"MISMATCH at {row['date']}: API {by_date.get(row['date'])} vs SQL {row}"
    return f"MISMATCH: API has {len(actual)} periods, SQL {len(expected)}"


def measure_case(case: Case, base: str, engine, args, result: Result) -> None:
    span = period(args)
    params = {"start_date": span["start"].isoformat(), "end_date": span["end"].isoformat(),
              "group_by": case.group_by}
    user_id = None if case.all_users else result.user_id
    if user_id:
        params["user_id"] = user_id
    for _ in range(2):  # warm-up: worker, connection pool, plan cache, database pages
        _, body = http_get(base, case.path, params)
    api = statistics.median(http_get(base, case.path, params)[0] for _ in range(args.runs))

    build = queries.metrics_statement if case.path == "/metrics" else queries.sessions_statement
    arguments = {**span, "group_by": case.group_by, "user_id": user_id}
    with engine.connect() as conn:
        rows = conn.execute(build(**arguments)).all()  # the warm-up, and the reference answer
        timings = []
        for _ in range(args.sql_runs):
            began = time.perf_counter()
            conn.execute(build(**arguments)).all()
            timings.append(time.perf_counter() - began)
    result.api_ms[case.name] = api * 1000
    result.sql_ms[case.name] = statistics.median(timings) * 1000
    result.answer[case.name] = compare(expected_answer(case, rows), body["data"])
    if not body["data"]:
        result.answer[case.name] += " (empty)"
    print(f"  {case.name:<28} API {result.api_ms[case.name]:9.1f} ms   plain SQL "
          f"{result.sql_ms[case.name]:9.1f} ms   {result.answer[case.name]}", flush=True)


def check_answer(case: Case, base: str, engine, args, result: Result) -> None:
    """Compare the API's answer with the plain SQL's once more (after the purge)."""
    span = period(args)
    params = {"start_date": span["start"].isoformat(), "end_date": span["end"].isoformat(),
              "group_by": case.group_by}
    _, body = http_get(base, case.path, params)
    build = queries.metrics_statement if case.path == "/metrics" else queries.sessions_statement
    with engine.connect() as conn:
        rows = conn.execute(build(**span, group_by=case.group_by, user_id=None)).all()
    answer = compare(expected_answer(case, rows), body["data"])
    result.answer[f"{case.name}, after the purge"] = answer
    print(f"  {case.name + ', after the purge':<45} {answer}", flush=True)


def measure_purge(base: str, url: str, args) -> dict:
    """Purge the first day while wrk posts single events; the purge's rate and ingest p99."""
    engine = make_engine(url, statement_timeout_ms=0)
    cutoff = datetime.combine(FIRST_DAY + timedelta(days=1), datetime.min.time(), timezone.utc)
    expected = retention.count_expired(engine, cutoff)
    outcome: dict = {}

    def purge() -> None:
        began = time.perf_counter()
        try:
            outcome["rows"] = retention.purge_expired(engine, cutoff,
                                                      batch_size=args.purge_batch_size)
        except Exception as exc:  # reported below, after wrk stops
            outcome["error"] = exc
        outcome["seconds"] = time.perf_counter() - began

    worker = threading.Thread(target=purge)
    worker.start()
    runs = []
    while worker.is_alive():
        runs.append(run_wrk(base, args.duration, args.connections))
    worker.join()
    engine.dispose()
    if "error" in outcome:
        raise RuntimeError(f"the purge failed: {outcome['error']!r}")
    if outcome["rows"] != expected:
        raise RuntimeError(f"the purge removed {outcome['rows']} events, {expected} expected")
    figures = {
        "rows": outcome["rows"], "seconds": outcome["seconds"],
        "rate": outcome["rows"] / outcome["seconds"], "wrk_runs": len(runs),
        "p99_ms": max(run["p99_ms"] for run in runs),
        "rps": statistics.mean(run["rps"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
    }
    print(f"  purge of the first day: {figures['rows']:,} events in {figures['seconds']:.1f} s "
          f"({figures['rate']:,.0f} events/s); POST /track during it: worst p99 "
          f"{figures['p99_ms']:.1f} ms over {len(runs)} wrk run(s), {figures['rps']:.0f} req/s",
          flush=True)
    return figures


def typical_user(conn, args, n_events: int) -> str:
    """The first user (user00000, user00001, ...) with at least the average number of events
    and at least one session in the range: a one-user answer that is neither empty nor
    unusually large."""
    average = n_events / args.users
    span = period(args)
    for n in range(args.users):
        user_id = f"user{n:05d}"
        count = conn.execute(text("SELECT count(*) FROM events WHERE user_id = :u"),
                             {"u": user_id}).scalar()
        if count >= average and conn.execute(
                queries.sessions_statement(**span, user_id=user_id)).first():
            return user_id
    raise RuntimeError("no user with sessions in the data set")


def measure(backend: str, url: str, args, result: Result) -> None:
    engine = make_engine(url, statement_timeout_ms=0)
    with engine.connect() as conn:
        if backend == "PostgreSQL":
            print("  " + conn.execute(text("SELECT version()")).scalar().split(",")[0])
        result.user_id = typical_user(conn, args, result.events)
        events = conn.execute(text("SELECT count(*) FROM events WHERE user_id = :u"),
                              {"u": result.user_id}).scalar()
        print(f"  one user: {result.user_id} ({events} events)")
    with gunicorn("wsgi:app", env={"DATABASE_URL": url}, workers=args.workers) as (base, master):
        for case in CASES:
            measure_case(case, base, engine, args, result)
        result.rss_mb = max(worker_rss_mb(master) or [0])
        if args.track:
            run_wrk(base, 2, args.connections)  # warm-up
            result.track = run_wrk(base, args.duration, args.connections)
            result.rss_mb = max(result.rss_mb, *(worker_rss_mb(master) or [0]))
            if args.purge:
                result.purge = measure_purge(base, url, args)
                result.rss_mb = max(result.rss_mb, *(worker_rss_mb(master) or [0]))
                for case in CASES:
                    if case.all_users and case.group_by == "day":
                        check_answer(case, base, engine, args, result)
    engine.dispose()
    if args.track:
        # The framework ceiling, measured right after, with the same gunicorn configuration.
        result.trivial = measure_wrk("trivial Flask endpoint", "bench.trivial_app:app", {}, args)
        print(f"  POST /track {result.track['rps']:.0f} req/s, trivial endpoint "
              f"{result.trivial['rps']:.0f} req/s; worker RSS up to {result.rss_mb:.0f} MB",
              flush=True)


# --- report ------------------------------------------------------------------------------------

def ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def print_table(results: list[Result], big: Result | None, small: Result | None) -> None:
    header = ["query"]
    for r in results:
        header += [f"{r.label} API ms", f"{r.label} plain SQL ms", "speed-up"]
    growth = big is not None and small is not None
    if growth:
        header += [f"API {millions(big.events)} ÷ {millions(small.events)}",
                   f"plain SQL {millions(big.events)} ÷ {millions(small.events)}"]
    header.append("answer = plain SQL")
    lines = [header, ["---"] + ["---:"] * (len(header) - 2) + ["---"]]
    for case in CASES:
        row = [case.name]
        for r in results:
            api, sql = r.api_ms[case.name], r.sql_ms[case.name]
            row += [ms(api), ms(sql), f"{sql / api:,.1f}×"]
        if growth:
            row += [f"{big.api_ms[case.name] / small.api_ms[case.name]:.2f}×",
                    f"{big.sql_ms[case.name] / small.sql_ms[case.name]:.2f}×"]
        row.append(", ".join(f"{r.label} {r.answer[case.name]}" for r in results))
        lines.append(row)
    extra = len(header) - 1 - 3 * len(results)
    if any(r.track for r in results):
        for title, cell in (
                ("POST /track req/s (wrk)", lambda r: f"{r.track['rps']:.0f}"),
                ("trivial endpoint req/s (wrk)", lambda r: f"{r.trivial['rps']:.0f}"),
                ("POST /track ÷ trivial", lambda r: f"{r.track['rps'] / r.trivial['rps']:.0%}"),
                ("POST /track p50 / p99 ms",
                 lambda r: f"{r.track['p50_ms']:.1f} / {r.track['p99_ms']:.1f}"),
                ("wrk errors (track / trivial)",
                 lambda r: f"{r.track['errors']} / {r.trivial['errors']}")):
            row = [title]
            for r in results:
                row += [cell(r) if r.track else "", "", ""]
            lines.append(row + [""] * extra)
    if any(r.purge for r in results):
        for title, cell in (
                ("purge of the first day: events / s / events per s",
                 lambda r: f"{r.purge['rows']:,} / {r.purge['seconds']:.1f} / "
                           f"{r.purge['rate']:,.0f}"),
                ("POST /track p99 ms during the purge (worst wrk run) / without",
                 lambda r: f"{r.purge['p99_ms']:.1f} / {r.track['p99_ms']:.1f} "
                           f"({r.purge['p99_ms'] / r.track['p99_ms']:.2f}×)"),
                ("POST /track req/s during the purge", lambda r: f"{r.purge['rps']:.0f}")):
            row = [title]
            for r in results:
                row += [cell(r) if r.purge else "", "", ""]
            lines.append(row + [""] * extra)
    row = ["largest worker RSS MB"]
    for r in results:
        row += [f"{max(r.rss_mb, (r.trivial or {}).get('rss_mb', 0)):.0f}", "", ""]
    lines.append(row + [""] * extra)
    row = ["load s / rollups rebuild + ANALYZE s"]
    for r in results:
        row += [f"{r.load_s:.0f} / {r.rebuild_s:.0f}", "", ""]
    lines.append(row + [""] * extra)
    print()
    for line in lines:
        print("| " + " | ".join(line) + " |")


def check_targets(results: list[Result], big: Result | None, small: Result | None,
                  sqlite_small: Result | None) -> None:
    checks = []

    def latency(r: Result, names, limit, what):
        worst = max((r.api_ms[n], n) for n in names)
        checks.append((f"{r.label}: {what} ≤ {limit} ms", worst[0] <= limit,
                       f"worst {worst[0]:.1f} ms ({worst[1]})"))

    all_metrics = [c.name for c in CASES if c.path == "/metrics" and c.all_users]
    all_sessions = [c.name for c in CASES if c.path == "/sessions" and c.all_users]
    for r in (big, sqlite_small):
        if r is None:
            continue
        latency(r, all_metrics, METRICS_ALL_MS, "/metrics all users")
        latency(r, ["/metrics day, one user"], ONE_USER_MS, "/metrics one user")
        latency(r, all_sessions, SESSIONS_ALL_MS, "/sessions all users")
        latency(r, ["/sessions day, one user"], ONE_USER_MS, "/sessions one user")
    if big is not None and small is not None:
        worst = max((big.api_ms[c.name] / small.api_ms[c.name], c.name) for c in CASES)
        checks.append((f"PostgreSQL: API latency at {millions(big.events)} ≤ {GROWTH_MAX}× "
                       f"at {millions(small.events)}", worst[0] <= GROWTH_MAX,
                       f"worst {worst[0]:.2f}× ({worst[1]})"))
    for r in results:
        if r.track:
            share = r.track["rps"] / r.trivial["rps"]
            checks.append((f"{r.label}: POST /track ≥ {TRACK_SHARE_MIN:.0%} of the trivial "
                           "endpoint", share >= TRACK_SHARE_MIN,
                           f"{r.track['rps']:.0f} / {r.trivial['rps']:.0f} req/s = {share:.0%}"))
        if r.purge:
            ratio = r.purge["p99_ms"] / r.track["p99_ms"]
            checks.append((f"{r.label}: POST /track p99 during the purge ≤ {PURGE_P99_MAX:g}× "
                           "without", ratio <= PURGE_P99_MAX,
                           f"{r.purge['p99_ms']:.1f} / {r.track['p99_ms']:.1f} ms = {ratio:.2f}×; "
                           f"purge {r.purge['rate']:,.0f} events/s"))
    rss = max(max(r.rss_mb, (r.trivial or {}).get("rss_mb", 0)) for r in results)
    checks.append((f"worker RSS < {RSS_MAX_MB} MB", rss < RSS_MAX_MB, f"largest {rss:.0f} MB"))
    mismatches = [f"{r.label} {n}" for r in results for n, a in r.answer.items()
                  if not a.startswith("OK")]
    checks.append(("every API answer equals the plain SQL's", not mismatches,
                   "; ".join(mismatches) or f"{sum(len(r.answer) for r in results)} compared"))
    print("\nTargets:")
    for title, met, figure in checks:
        print(f"- {title}: {'met' if met else 'MISSED'} ({figure})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000,
                        help="events of the large data set (PostgreSQL)")
    parser.add_argument("--small", type=int, default=1_000_000,
                        help="events of the small data set (PostgreSQL and SQLite); 0: none")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=7, help="HTTP requests per query")
    parser.add_argument("--sql-runs", type=int, default=3, help="plain SQL runs per query")
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--workers", type=int, default=None,
                        help="gunicorn workers (default: gunicorn.conf.py's one per CPU)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-track", dest="track", action="store_false",
                        help="skip the POST /track measurement")
    parser.add_argument("--no-purge", dest="purge", action="store_false",
                        help="skip the purge under ingest (needs the POST /track measurement)")
    parser.add_argument("--purge-batch-size", type=int, default=None,
                        help="events deleted per transaction by the purge (default: the purge "
                             "command's, 1000 on PostgreSQL and 200 on SQLite)")
    args = parser.parse_args()
    if args.track and not shutil.which("wrk"):
        sys.exit("wrk is needed for POST /track (apt-get install wrk), or pass --no-track")

    plan = []  # the small data sets first: they are quick and show problems early
    if args.small and not args.no_sqlite:
        plan.append(("SQLite", scratch_sqlite, args.small))
    if not args.no_postgres:
        if args.small:
            plan.append(("PostgreSQL", scratch_postgres, args.small))
        plan.append(("PostgreSQL", scratch_postgres, args.events))
    print(f"{args.users:,} users, {args.days} days from {FIRST_DAY}; SQLite "
          f"{sqlite3.sqlite_version}; {args.runs} HTTP runs and {args.sql_runs} plain SQL runs "
          f"per query", flush=True)

    results = []
    for backend, scratch, n_events in plan:
        result = Result(backend, n_events)
        with scratch() as url:
            load(backend, url, args, n_events, result)
            measure(backend, url, args, result)
        results.append(result)

    def find(backend, n):
        return next((r for r in results if r.backend == backend and r.events == n), None)

    big = find("PostgreSQL", args.events)
    small = find("PostgreSQL", args.small) if args.small != args.events else None
    print_table(results, big, small)
    check_targets(results, big, small, find("SQLite", args.small))


if __name__ == "__main__":
    main()
