"""Bulk ingest throughput: POST /track/batch and ``flask import`` beside the raw driver.

    .venv/bin/python bench/ingest.py [--events 100000] [--batch 1000] [--clients 4]
                                     [--workers N] [--rounds 3] [--no-postgres] [--no-sqlite]
                                     [--in-time-order] [--without-aggregates]
                                     [--statements] [--analyze SECONDS]

For each backend (SQLite unless --no-sqlite, then PostgreSQL at BENCH_POSTGRES_URL unless
--no-postgres), on a fresh database migrated with alembic (so the same table, constraint and
indexes everywhere), the same generated events (each with an event_id, a past timestamp and a
little metadata) are stored by each path in turn, the table emptied in between, for --rounds
rounds. The events come in random order over the last 20 days (every batch touches hundreds of
quarter-hour rows and repairs sessions in the middle of users' histories); --in-time-order
sends them oldest first instead, as a live stream or an export (GET /events) delivers them:

- raw: the driver alone, with values already in the driver's types, in transactions of
  --batch rows (one COMMIT per 1000 rows, the durability unit of a batch request):
  psycopg binary COPY on PostgreSQL, sqlite3 executemany on SQLite (with the app's PRAGMAs);
- batch: POST /track/batch with --batch events a request, sent by --clients concurrent
  clients to gunicorn (the project's gunicorn.conf.py; --workers overrides WEB_CONCURRENCY);
  bodies are encoded, and the workers warmed up, before the clock starts;
- import: ``flask --app wsgi import`` on an NDJSON file of the events, timed as an operator
  sees it (process start-up included);
- batch and import each end with a GET /active-users, in their time, which folds what they left
  in the active users' log (docs/architecture.md);
- with --without-aggregates, batch (no aggregates): the same batches to a second server
  (bench/app_without.py) with every aggregate of the registry taken out, whose answers are
  wrong: what parsing, checking and inserting alone reach, a ceiling that no design of the
  aggregates can pass;
- raw (one transaction): raw again with a single COMMIT at the end, for reference: what the
  driver reaches when nothing is durable until the end.

Prints each round, then the median events/s of each path and the median over rounds of its
ratio to raw in the same round, and beside them the CPU each path spent an event: in the
application (the gunicorn workers for batch, the import's process, the driver in this process
for raw; on SQLite the database's work is done there too) and in the PostgreSQL server (its
processes, from ``/proc``), with raw's total ÷ the path's: what the path costs the machine,
whatever else its other guests run. On PostgreSQL the batches' rows also give how many of the
server's backends were waiting for a lock, on average (``pg_locks`` sampled every 20 ms): how
much the concurrent batches wait for each other. With --statements, the batches' statements on
PostgreSQL are listed too, each with its time in the server an event (``pg_stat_statements``,
which the server must preload: ``shared_preload_libraries = 'pg_stat_statements'``): the
time each spends under the load of the others, lock waits included. With --analyze, an
``ANALYZE`` of the tables the sessions' repair reads runs every SECONDS during the batches on
PostgreSQL, as autovacuum keeps a server in service analysed: without it, this script's fresh
database is never analysed during a run, and each connection keeps the plans it made for the
repair's statements while the tables were small. Every stored row is counted after each run; a
run that stores fewer rows than it was given fails the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import http.client  # noqa: E402

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from analytics.aggregates import REGISTRY  # noqa: E402
from analytics.models import sqlite_timestamp  # noqa: E402
from bench.support import (  # noqa: E402
    ROOT,
    driver_conninfo,
    gunicorn,
    pids_named,
    scratch_postgres,
    scratch_sqlite,
    service_cpu_seconds,
)

COLUMNS = ("event", "user_id", "occurred_at", "received_at", "metadata", "event_id")
COPY_TYPES = ("varchar", "varchar", "timestamptz", "timestamptz", "jsonb", "varchar")
NAMES = ("play", "stop", "pause", "skip", "purchase")


def generate(count: int, seed: int = 7, users: int = 1000) -> list[dict]:
    """Events as clients send them: ``users`` users, five names, the last 20 days."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    return [
        {
            "event": rng.choice(NAMES),
            "user_id": f"user{rng.randrange(users)}",
            "timestamp": (now - timedelta(seconds=rng.randrange(20 * 86400)))
            .isoformat()
            .replace("+00:00", "Z"),
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "metadata": {"song_id": f"song{rng.randrange(5000)}", "device": "mobile"},
        }
        for _ in range(count)
    ]


def driver_rows(events: list[dict]) -> list[tuple]:
    """The events as the raw runs insert them: already in the driver's types."""
    received = datetime.now(UTC)
    return [
        (
            e["event"],
            e["user_id"],
            datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")),
            received,
            json.dumps(e["metadata"]),
            e["event_id"],
        )
        for e in events
    ]


def count_rows(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.scalar(text("SELECT count(*) FROM events"))
    engine.dispose()
    return n


def empty_table(url: str) -> None:
    """Empty the events and every aggregate's tables."""
    tables = ["events", *(table for aggregate in REGISTRY for table in aggregate.tables)]
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.execute(text("VACUUM"))
    engine.dispose()


# --- raw ----------------------------------------------------------------------------------------


def raw_postgres(url: str, rows: list[tuple], batch: int) -> float:
    import psycopg

    dsn = driver_conninfo(url)
    # Binary, as the app's own COPY: the rows are written in C and the server parses no text.
    statement = f"COPY events ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        for first in range(0, len(rows), batch):
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows[first : first + batch]:
                    copy.write_row(row)
            conn.commit()
        return time.perf_counter() - start


def raw_sqlite(url: str, rows: list[tuple], batch: int) -> float:
    # The app's storage format for UTCDateTime on SQLite.
    converted = [
        (e, u, sqlite_timestamp(o), sqlite_timestamp(r), m, i) for e, u, o, r, m, i in rows
    ]
    conn = sqlite3.connect(make_url(url).database, isolation_level=None)
    # The same settings as the app's connections (analytics/db.py).
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    statement = (
        f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    )
    try:
        start = time.perf_counter()
        for first in range(0, len(converted), batch):
            conn.execute("BEGIN")
            conn.executemany(statement, converted[first : first + batch])
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def raw(url: str, rows: list[tuple], batch: int) -> float:
    if make_url(url).get_backend_name() == "postgresql":
        return raw_postgres(url, rows, batch)
    return raw_sqlite(url, rows, batch)


# --- through the API ------------------------------------------------------------------------------


def settle(base_url: str) -> float:
    """Seconds a GET /active-users of one day takes: it first folds whatever the writes left in
    the active users' log, work that belongs to their cost."""
    start = time.perf_counter()
    with urlopen(f"{base_url}/active-users?start_date=2000-01-01&end_date=2000-01-01") as answer:
        if answer.status != 200:
            raise RuntimeError(f"GET /active-users: {answer.status}")
    return time.perf_counter() - start


def post_batches(base_url: str, bodies: list[bytes], clients: int) -> float:
    """Send every body once, ``clients`` at a time; seconds from first request to last answer."""
    parts = urlsplit(base_url)
    queue = list(reversed(bodies))
    lock = threading.Lock()
    failures: list[str] = []

    def client():
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            connection.request(
                "POST", "/track/batch", body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                failures.append(f"{response.status} {payload[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} batch requests failed, e.g. {failures[0]}")
    return elapsed


def run_import(url: str, path: Path, batch: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "import",
            str(path),
            "--chunk-size",
            str(batch),
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"import failed ({done.returncode}): {done.stdout}{done.stderr}")
    return elapsed


class CPU:
    """CPU seconds spent while the block runs by the application's processes of one path
    (``app``: "self", "children" for processes that ended, or the pid of a live one, with
    everything under it) and, when ``server``, by PostgreSQL's processes."""

    def __init__(self, app: str | int, server: bool):
        self.app, self.server = app, server

    def _now(self) -> tuple[float, float]:
        if self.app == "self":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            app = usage.ru_utime + usage.ru_stime
        elif self.app == "children":
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            app = usage.ru_utime + usage.ru_stime
        else:
            app = _settled(lambda: service_cpu_seconds([int(self.app)]))
        if not self.server:
            return app, 0.0  # SQLite: the database works inside the application
        # The server's processes as they are now: backends that ended are counted in their
        # postmaster's children's time, new ones in full.
        server = _settled(lambda: service_cpu_seconds(pids_named("postgres")))
        return app, server

    def __enter__(self) -> CPU:
        self.start = self._now()
        return self

    def __exit__(self, *exc) -> None:
        end = self._now()
        self.app_seconds, self.server_seconds = (b - a for a, b in zip(self.start, end))


class Statements:
    """The time PostgreSQL spent in each statement while the block runs, by its text
    (``pg_stat_statements``, reset on entry), in the scratch database only."""

    def __init__(self, url: str | None):
        self.url = url
        self.seconds: dict[str, float] = {}

    def _connect(self):
        import psycopg

        conninfo = driver_conninfo(self.url)
        return psycopg.connect(conninfo, autocommit=True)

    def __enter__(self) -> Statements:
        if self.url is not None:
            with self._connect() as conn:
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    conn.execute("SELECT pg_stat_statements_reset()")
                except Exception as exc:
                    raise RuntimeError(
                        "--statements needs pg_stat_statements in the server's "
                        f"shared_preload_libraries: {exc}"
                    ) from exc
        return self

    def __exit__(self, *exc) -> None:
        if self.url is None:
            return
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT regexp_replace(query, '\\s+', ' ', 'g'), sum(total_exec_time) "
                "FROM pg_stat_statements WHERE dbid = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY 1"
            ).fetchall()
        for query, milliseconds in rows:
            if "pg_locks" in query or "pg_stat_statements" in query:
                continue  # this script's own
            # Named by their start and, where a CTE comes first, the table they write; those
            # that differ only in a temporary table (one per connection) count as one.
            query = query.strip()
            writes = re.search(r"\b(INSERT INTO|DELETE FROM|UPDATE) \w+", query)
            key = query[:60]
            if writes is not None and writes.start() >= 60:
                key = f"{query[:40]} … {writes.group(0)}"
            self.seconds[key] = self.seconds.get(key, 0.0) + milliseconds / 1000


class Repeating:
    """``step`` on a PostgreSQL connection of its own, every ``seconds``, in a thread while the
    block runs (nothing when ``url`` or ``seconds`` is None)."""

    def __init__(self, url: str | None, seconds: float | None):
        self.url, self.seconds = url, seconds
        self.running = url is not None and bool(seconds)

    def step(self, conn) -> None:
        raise NotImplementedError

    def __enter__(self):
        if self.running:
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._repeat)
            self.thread.start()
        return self

    def _repeat(self) -> None:
        import psycopg

        with psycopg.connect(driver_conninfo(self.url), autocommit=True) as conn:
            while not self.done.wait(self.seconds):
                self.step(conn)

    def __exit__(self, *exc) -> None:
        if self.running:
            self.done.set()
            self.thread.join()


class Analyzing(Repeating):
    """``ANALYZE`` of the tables the sessions' repair reads, every ``seconds``."""

    def step(self, conn) -> None:
        conn.execute("ANALYZE events, sessions")


class LockWaits(Repeating):
    """The mean number of PostgreSQL backends waiting for a lock, sampled every 20 ms."""

    def __init__(self, url: str | None):
        super().__init__(url, 0.02)
        self.samples: list[int] = []
        self.mean: float | None = None

    def step(self, conn) -> None:
        waiting = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        self.samples.append(waiting.fetchone()[0])

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if self.running:
            if not self.samples:  # the sampler failed (its error is printed): no figure
                raise RuntimeError("no lock waits were sampled")
            self.mean = statistics.fmean(self.samples)


def _settled(read):
    """``read()``, again if a process ended while it was being read."""
    for _ in range(5):
        try:
            return read()
        except FileNotFoundError:
            continue
    return read()


def measure(name: str, url: str, events: list[dict], args) -> list[dict[str, float]]:
    """events/s of each path, per round, and (keys ending in " cpu") its application's and its
    server's CPU µs an event."""
    n = len(events)
    rows = driver_rows(events)
    bodies = [
        json.dumps({"events": events[i : i + args.batch]}).encode() for i in range(0, n, args.batch)
    ]

    def check(label: str) -> None:
        stored = count_rows(url)
        if stored != n:
            raise RuntimeError(f"{name} {label}: {stored} rows stored, expected {n}")
        empty_table(url)

    rounds = []
    postgres = make_url(url).get_backend_name() == "postgresql"
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        servers = {
            "batch": stack.enter_context(
                gunicorn("wsgi:app", env={"DATABASE_URL": url}, workers=args.workers)
            )
        }
        if args.without_aggregates:
            everything = ",".join(aggregate.name for aggregate in REGISTRY)
            servers["batch (no aggregates)"] = stack.enter_context(
                gunicorn(
                    "bench.app_without:app",
                    env={"DATABASE_URL": url, "BENCH_WITHOUT": everything},
                    workers=args.workers,
                )
            )
        path = Path(folder) / "events.ndjson"
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
        # Warm-up: every worker imported, connected and through its first request before the
        # clock starts (the warm-up events are removed again).
        for base, _ in servers.values():
            post_batches(
                base,
                [json.dumps({"events": events[:1]}).encode()] * 4 * args.clients,
                args.clients,
            )
        empty_table(url)
        base, server = servers["batch"]
        for number in range(1, args.rounds + 1):
            seconds, cpu = {}, {}
            with CPU("self", postgres) as cpu["raw"]:
                seconds["raw"] = raw(url, rows, args.batch)
            check("raw")
            with (
                CPU(server.pid, postgres) as cpu["batch"],
                LockWaits(url if postgres else None) as waits,
                Statements(url if postgres and args.statements else None) as statements,
                Analyzing(url if postgres else None, args.analyze),
            ):
                seconds["batch"] = post_batches(base, bodies, args.clients) + settle(base)
            check("batch")
            if "batch (no aggregates)" in servers:
                label = "batch (no aggregates)"
                bare, bare_server = servers[label]
                with CPU(bare_server.pid, postgres) as cpu[label]:
                    seconds[label] = post_batches(bare, bodies, args.clients)
                check(label)
            with CPU("children", postgres) as cpu["import"], CPU(server.pid, postgres) as settling:
                seconds["import"] = run_import(url, path, args.batch) + settle(base)
            cpu["import"].app_seconds += settling.app_seconds  # the fold, in a worker
            check("import")
            with CPU("self", postgres) as cpu["raw (one transaction)"]:
                seconds["raw (one transaction)"] = raw(url, rows, n)
            check("raw, one transaction")
            rates = {label: n / value for label, value in seconds.items()}
            rates["batch waiting"] = waits.mean
            rates["batch statements"] = {
                key: sec / n * 1e6 for key, sec in statements.seconds.items()
            }
            for label, used in cpu.items():
                rates[f"{label} cpu"] = (
                    used.app_seconds / n * 1e6,
                    used.server_seconds / n * 1e6,
                )
            rounds.append(rates)
            print(
                f"  {name} round {number}: "
                + ", ".join(f"{label} {n / took:,.0f}/s" for label, took in seconds.items()),
                flush=True,
            )
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--in-time-order", action="store_true")
    parser.add_argument("--without-aggregates", action="store_true")
    parser.add_argument("--statements", action="store_true")
    parser.add_argument("--analyze", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args()

    events = generate(args.events)
    if args.in_time_order:
        events.sort(key=lambda e: e["timestamp"])  # one ISO format throughout: sorts as text
    backends = [] if args.no_sqlite else [("SQLite", scratch_sqlite)]
    if not args.no_postgres:
        backends.append(("PostgreSQL", scratch_postgres))
    print(
        f"{args.events} events, {args.batch} a transaction/request, {args.clients} HTTP "
        f"clients, {args.rounds} rounds, {os.cpu_count()} CPUs, "
        + ("in time order" if args.in_time_order else "in random order")
    )
    table, statements = [], []
    for name, scratch in backends:
        with scratch() as url:
            rounds = measure(name, url, events, args)
        for label in rounds[0]:
            if label.endswith((" cpu", " waiting", " statements")):
                continue
            rate = statistics.median(r[label] for r in rounds)
            # Each round's ratio compares runs made minutes apart at most; the median of those
            # is steadier than the ratio of medians on a machine whose speed drifts.
            ratio = statistics.median(r[label] / r["raw"] for r in rounds)
            app = statistics.median(r[f"{label} cpu"][0] for r in rounds)
            server = statistics.median(r[f"{label} cpu"][1] for r in rounds)
            by_cpu = statistics.median(sum(r["raw cpu"]) / sum(r[f"{label} cpu"]) for r in rounds)
            waiting = None
            if label == "batch" and rounds[0]["batch waiting"] is not None:
                waiting = statistics.median(r["batch waiting"] for r in rounds)
            table.append((name, label, rate, ratio, app, server, by_cpu, waiting))
        if rounds[0]["batch statements"]:
            keys = {key for r in rounds for key in r["batch statements"]}
            medians = {
                key: statistics.median(r["batch statements"].get(key, 0.0) for r in rounds)
                for key in keys
            }
            statements.append((name, sorted(medians.items(), key=lambda item: -item[1])[:10]))
    print()
    print(
        "| backend | path | events/s (median) | vs raw (median of rounds) "
        "| CPU µs an event: application + server | vs raw by CPU | backends waiting for a lock |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, label, rate, ratio, app, server, by_cpu, waiting in table:
        print(
            f"| {name} | {label} | {rate:,.0f} | {ratio:.0%} "
            f"| {app:.1f} + {server:.1f} | {by_cpu:.0%} "
            f"| {'' if waiting is None else f'{waiting:.2f}'} |"
        )

    for name, rows in statements:
        print()
        print(f"{name}, the batches' statements: server time an event (lock waits included)")
        print()
        print("| µs an event | statement |")
        print("| ---: | --- |")
        for key, micros in rows:
            print(f"| {micros:.1f} | `{key}` |")


if __name__ == "__main__":
    main()
