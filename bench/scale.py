"""GET /metrics and GET /sessions at scale through HTTP, beside plain SQL over the raw events.

    .venv/bin/python bench/scale.py [--events 10000000] [--small 1000000] [--users 100000]
                                    [--days 30] [--runs 5] [--sql-runs 1] [--duration 8]
                                    [--connections 16] [--workers N] [--quick]
                                    [--no-sqlite] [--no-postgres] [--no-track] [--no-purge]
                                    [--purge-batch-size N]

For each data set (PostgreSQL at ``--events`` and at ``--small`` events, SQLite at ``--small``
only): generates the events with bench/data.py (``--days`` days from 2025-01-01, ``--users``
users, 20 event names, a third of them play/stop; the same events for the same arguments),
loads them into a fresh database created by ``alembic upgrade head`` (secondary indexes built
after the load), recomputes the aggregates with ``writer.rebuild_aggregates(engine)`` and
analyses. Then, with gunicorn serving ``wsgi:app`` on each data set of a backend at once (the
project's gunicorn.conf.py), for every combination, over the whole range and all users, of
tz (UTC, Asia/Kathmandu, America/Los_Angeles), group_by (hour, day, week, month), week_start
(monday, sunday) and, on /metrics, ``event`` (absent, ``play``, ``play`` and ``purchase``),
plus /metrics and /sessions by day for one typical user:

- API: the median of ``--runs`` sequential HTTP requests after one warm-up request, the
  requests to a backend's data sets taken in turn, so that the growth from one to the other is
  measured over the same minutes;
- plain: the bench's own SQL over the raw events (no aggregate, no bucket):
  PostgreSQL groups ``occurred_at AT TIME ZONE tz`` with ``to_char``/``date_trunc`` (and
  ``LEAD`` pairs the sessions); on SQLite, which has no time zones, SQL reads the range's raw
  events (sessions: paired with the same ``LEAD``) and Python groups them with ``zoneinfo``.
  The median of ``--sql-runs`` executions, the first of which gives the reference answer,
  compared with the HTTP answer: OK or MISMATCH. The plain statement does not depend on
  week_start unless group_by is week, so it runs once for both week starts;
- then (unless --no-track) single-event POST /track with wrk on the same server and the trivial
  Flask endpoint right after (the framework ceiling), and the largest worker RSS; then (unless
  --no-purge) the purge of the first day (``retention.purge_expired``) under wrk, and the
  answers compared with the plain ones again.

Prints the table (API and plain medians in ms and their ratio side by side, the growth from the
small to the large data set on PostgreSQL, the answers), a summary of the worst case per
endpoint and group_by, and whether each target is met. ``--quick``: only week_start monday and
the events absent/``play`` (for trying the bench out). Findings: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import sqlite3
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import bindparam, text  # noqa: E402

from analytics import retention, writer  # noqa: E402
from analytics.db import make_engine  # noqa: E402
from analytics.models import sqlite_timestamp  # noqa: E402
from bench.data import FIRST_DAY, generate, load_postgres, load_sqlite  # noqa: E402
from bench.support import gunicorn, scratch_postgres, scratch_sqlite, worker_rss_mb  # noqa: E402
from bench.track_http import measure as measure_wrk  # noqa: E402
from bench.track_http import run_wrk, run_wrk_during

MICROSECONDS = 1_000_000
UTC = UTC

# Targets (issue 11, "4. Performance"; one user and ingest as before).
METRICS_ALL_MS, SESSIONS_ALL_MS, ONE_USER_MS = 50, 100, 20
GROWTH_MAX, TRACK_SHARE_MIN, RSS_MAX_MB = 1.5, 0.5, 150
PURGE_P99_MAX = 2.0  # ingest p99 during a purge, as a multiple of the p99 without one

TZS = ("UTC", "Asia/Kathmandu", "America/Los_Angeles")
GROUP_BYS = ("hour", "day", "week", "month")
WEEK_STARTS = ("monday", "sunday")
EVENT_SETS = ((), ("play",), ("play", "purchase"))


@dataclass(frozen=True)
class Case:
    path: str  # /metrics or /sessions
    tz: str
    group_by: str
    week_start: str = "monday"
    events: tuple[str, ...] = ()
    one_user: bool = False

    @property
    def name(self) -> str:
        events = "+".join(self.events) or "-"
        user = ", one user" if self.one_user else ""
        event_part = f" event={events}" if self.path == "/metrics" else ""
        return f"{self.path} {self.group_by} {self.tz} {self.week_start[:3]}{event_part}{user}"

    @property
    def plain_key(self) -> tuple:
        """What the plain statement depends on: week_start only for weeks."""
        return (
            self.path,
            self.tz,
            self.group_by,
            self.week_start if self.group_by == "week" else None,
            self.events,
            self.one_user,
        )


def all_cases(quick: bool) -> list[Case]:
    week_starts = WEEK_STARTS[:1] if quick else WEEK_STARTS
    event_sets = EVENT_SETS[:2] if quick else EVENT_SETS
    cases = [
        Case("/metrics", tz, g, w, e)
        for tz in TZS
        for g in GROUP_BYS
        for w in week_starts
        for e in event_sets
    ]
    cases += [Case("/sessions", tz, g, w) for tz in TZS for g in GROUP_BYS for w in week_starts]
    cases += [
        Case("/metrics", "UTC", "day", one_user=True),
        Case("/sessions", "UTC", "day", one_user=True),
    ]
    return cases


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
    """Load generated events, then rebuild the aggregates in one transaction and analyse."""
    rows = generate(n_events, args.users, args.days)
    began = time.perf_counter()
    (load_postgres if backend == "PostgreSQL" else load_sqlite)(url, rows)
    result.load_s = time.perf_counter() - began
    engine = make_engine(url, statement_timeout_ms=0)
    began = time.perf_counter()
    writer.rebuild_aggregates(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if backend == "PostgreSQL" else "ANALYZE")
    result.rebuild_s = time.perf_counter() - began
    engine.dispose()
    print(
        f"{result.label}: {n_events:,} events loaded in {result.load_s:.0f} s, "
        f"aggregates rebuilt and analysed in {result.rebuild_s:.0f} s",
        flush=True,
    )


# --- the plain answers: SQL over the raw events --------------------------------------------------


def span(args) -> tuple:
    return FIRST_DAY, FIRST_DAY + timedelta(days=args.days - 1)


def utc_range(args, tz: str) -> tuple[datetime, datetime]:
    """The instants of the local dates of the range: [first midnight, midnight after the last)."""
    start, end = span(args)
    zone = ZoneInfo(tz)
    return (
        datetime.combine(start, clock_time.min, zone).astimezone(UTC),
        datetime.combine(end + timedelta(days=1), clock_time.min, zone).astimezone(UTC),
    )


# PostgreSQL: (label without offset, offset in seconds) of ``local_at``, a timestamp in the zone.
PG_LABEL = {
    "hour": "to_char(local_at, 'YYYY-MM-DD\"T\"HH24:00')",
    "day": "to_char(local_at, 'YYYY-MM-DD')",
    "week": "to_char(CAST(local_at AS date) - (CAST(EXTRACT(ISODOW FROM local_at) AS integer) "
    "+ 6 - :week_start) % 7, 'YYYY-MM-DD')",
    "month": "to_char(date_trunc('month', local_at), 'YYYY-MM-DD')",
}
PG_OFFSET = "CAST(EXTRACT(EPOCH FROM local_at - (occurred_at AT TIME ZONE 'UTC')) AS integer)"
PG_METRICS = """
    SELECT {label}, {offset}, event, count(*)
    FROM (SELECT occurred_at, occurred_at AT TIME ZONE :tz AS local_at, event FROM events
          WHERE occurred_at >= :lo AND occurred_at < :hi {where}) AS e
    GROUP BY 1, 2, 3
"""
PAIRS = """
    WITH sequence AS (
        SELECT event, occurred_at, lead(event) OVER w AS next_event,
               lead(occurred_at) OVER w AS next_at
        FROM events WHERE event IN ('play', 'stop') {where}
        WINDOW w AS (PARTITION BY user_id ORDER BY occurred_at, id)
    )
    SELECT occurred_at, next_at FROM sequence
    WHERE event = 'play' AND next_event = 'stop' AND occurred_at >= :lo AND occurred_at < :hi
"""
PG_SESSIONS = (
    """
    SELECT {label}, {offset}, count(*), sum(us)
    FROM (SELECT occurred_at, occurred_at AT TIME ZONE :tz AS local_at,
                 CAST(EXTRACT(EPOCH FROM next_at - occurred_at) * 1000000 AS bigint) AS us
          FROM ("""
    + PAIRS
    + """) AS pairs) AS s
    GROUP BY 1, 2
"""
)
SQLITE_METRICS = (
    "SELECT occurred_at, event FROM events WHERE occurred_at >= :lo AND occurred_at < :hi {where}"
)


def _filters(case: Case, user_id: str | None, with_events: bool) -> tuple[str, dict, list]:
    where, parameters, binds = "", {}, []
    if case.one_user:
        where += " AND user_id = :user_id"
        parameters["user_id"] = user_id
    if with_events and case.events:
        where += " AND event IN :events"
        parameters["events"] = list(case.events)
        binds.append(bindparam("events", expanding=True))
    return where, parameters, binds


def plain_statement(case: Case, backend: str, user_id: str | None):
    """The plain statement of a case, and its parameters besides lo and hi."""
    where, parameters, binds = _filters(case, user_id, case.path == "/metrics")
    if backend == "PostgreSQL":
        template = PG_METRICS if case.path == "/metrics" else PG_SESSIONS
        offset = PG_OFFSET if case.group_by == "hour" else "0"
        sql = template.format(label=PG_LABEL[case.group_by], offset=offset, where=where)
        parameters["tz"] = case.tz
        if case.group_by == "week":
            parameters["week_start"] = WEEK_STARTS.index(case.week_start) * 6  # monday 0, sunday 6
    else:
        sql = (SQLITE_METRICS if case.path == "/metrics" else PAIRS).format(where=where)
    return text(sql).bindparams(*binds), parameters


def local_labeller(case: Case):
    """For SQLite: (label without offset, offset in seconds) of a stored UTC timestamp text,
    by zoneinfo. Every UTC offset is a whole number of minutes, so it is worked out once per
    minute."""
    zone = ZoneInfo(case.tz)
    week_start = WEEK_STARTS.index(case.week_start) * 6
    memo: dict[str, tuple[str, int]] = {}

    def label(stamp: str) -> tuple[str, int]:
        minute = stamp[:16]
        found = memo.get(minute)
        if found is None:
            local = datetime.fromisoformat(minute).replace(tzinfo=UTC).astimezone(zone)
            day = local.date()
            if case.group_by == "hour":
                found = (
                    f"{day.isoformat()}T{local.hour:02d}:00",
                    int(local.utcoffset().total_seconds()),
                )
            elif case.group_by == "day":
                found = (day.isoformat(), 0)
            elif case.group_by == "week":
                found = ((day - timedelta(days=(day.weekday() - week_start) % 7)).isoformat(), 0)
            else:
                found = (day.replace(day=1).isoformat(), 0)
            memo[minute] = found
        return found

    return label


def plain_rows(conn, case: Case, backend: str, user_id: str | None, args) -> list[tuple]:
    """(label, offset seconds, event, count) for /metrics, (label, offset seconds, sessions,
    total µs) for /sessions."""
    statement, parameters = plain_statement(case, backend, user_id)
    lo, hi = utc_range(args, case.tz)
    if backend == "PostgreSQL":
        return conn.execute(statement, {**parameters, "lo": lo, "hi": hi}).all()
    parameters.update(lo=sqlite_timestamp(lo), hi=sqlite_timestamp(hi))
    label = local_labeller(case)
    if case.path == "/metrics":
        counts = Counter(conn.execute(statement, parameters).all())  # rows hash as tuples
        grouped = Counter()
        for (stamp, event), n in counts.items():
            grouped[(*label(stamp), event)] += n
        return [(*key, n) for key, n in grouped.items()]
    totals: dict[tuple, list[int]] = {}
    for play_at, stop_at in conn.execute(statement, parameters):
        duration = datetime.fromisoformat(stop_at) - datetime.fromisoformat(play_at)
        total = totals.setdefault(label(play_at), [0, 0])
        total[0] += 1
        total[1] += duration // timedelta(microseconds=1)
    return [(*key, n, us) for key, (n, us) in totals.items()]


def offset_text(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def expected_answer(case: Case, rows) -> list[dict]:
    """The API's data array from the plain rows, by the contract's rules, in time order."""
    periods: dict[tuple, dict] = {}
    for label, offset, *values in rows:
        offset = int(offset)
        text_label = label + offset_text(offset) if case.group_by == "hour" else label
        # Time order: an hour's label by its UTC instant (a repeated hour comes twice).
        key = (
            (datetime.fromisoformat(label) - timedelta(seconds=offset)).isoformat()
            if case.group_by == "hour"
            else label
        )
        if case.path == "/metrics":
            event, count = values
            periods.setdefault((key, text_label), {"date": text_label})[event] = int(count)
        else:
            count, total = int(values[0]), int(values[1])
            periods[(key, text_label)] = {
                "date": text_label,
                "sessionCount": count,
                # Whole seconds, halves rounded up, in integers (exact).
                "totalDuration": (2 * total + MICROSECONDS) // (2 * MICROSECONDS),
                "averageDuration": (2 * total + count * MICROSECONDS) // (2 * count * MICROSECONDS),
            }
    return [periods[key] for key in sorted(periods)]


def compare(expected: list[dict], actual: list[dict]) -> str:
    if expected == actual:
        return "OK" if actual else "OK (empty)"
    by_date = {row["date"]: row for row in actual}
    for row in expected:
        if by_date.get(row["date"]) != row:
            return f"MISMATCH at {row['date']}: API {by_date.get(row['date'])} vs plain {row}"
    return (
        f"MISMATCH: API has {len(actual)} periods, plain {len(expected)} "
        f"(API extra: {[r['date'] for r in actual if r not in expected][:3]})"
    )


# --- one query, through HTTP and as plain SQL --------------------------------------------------


def http_get(base: str, path: str, params: list) -> tuple[float, dict]:
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


def query_string(case: Case, args, user_id: str | None) -> list[tuple[str, str]]:
    start, end = span(args)
    params = [
        ("start_date", start.isoformat()),
        ("end_date", end.isoformat()),
        ("group_by", case.group_by),
        ("tz", case.tz),
        ("week_start", case.week_start),
    ]
    params += [("event", name) for name in case.events]
    if case.one_user:
        params.append(("user_id", user_id))
    return params


class Plain:
    """The plain answers and timings of one data set, each statement run once per plain_key."""

    def __init__(self, engine, backend: str, args, user_id: str):
        self.engine, self.backend, self.args, self.user_id = engine, backend, args, user_id
        self.done: dict[tuple, tuple[list[dict], float]] = {}

    def run(self, case: Case, fresh: bool = False) -> tuple[list[dict], float]:
        if fresh or case.plain_key not in self.done:
            timings, rows = [], None
            with self.engine.connect() as conn:
                for _ in range(max(1, self.args.sql_runs)):
                    began = time.perf_counter()
                    rows = plain_rows(conn, case, self.backend, self.user_id, self.args)
                    timings.append(time.perf_counter() - began)
            self.done[case.plain_key] = (
                expected_answer(case, rows),
                statistics.median(timings) * 1000,
            )
        return self.done[case.plain_key]


@dataclass
class Served:
    """One data set with its server and its plain answers."""

    base: str
    master: object
    plain: Plain
    result: Result


def measure_case(case: Case, served: list[Served], args) -> None:
    """The API's median on every data set, their requests interleaved (so that the growth
    between them is not the machine's drift between two stretches of the run), then the plain
    statements, which would evict the API's pages if they ran in between."""
    params = [query_string(case, args, s.result.user_id) for s in served]
    bodies = [http_get(s.base, case.path, p)[1] for s, p in zip(served, params)]  # warm-up
    timings: list[list[float]] = [[] for _ in served]
    for _ in range(args.runs):
        for s, p, seconds in zip(served, params, timings):
            seconds.append(http_get(s.base, case.path, p)[0])
    for s, body, seconds in zip(served, bodies, timings):
        result = s.result
        expected, sql_ms = s.plain.run(case)
        result.api_ms[case.name] = statistics.median(seconds) * 1000
        result.sql_ms[case.name] = sql_ms
        result.answer[case.name] = compare(expected, body["data"])
        print(
            f"  {result.label:<16} {case.name:<62} API {result.api_ms[case.name]:7.1f} ms  "
            f"plain {sql_ms:8.1f} ms  {result.answer[case.name]}",
            flush=True,
        )


def check_answer(case: Case, base: str, plain: Plain, args, result: Result) -> None:
    """Compare the API's answer with a fresh plain one (after the purge)."""
    _, body = http_get(base, case.path, query_string(case, args, result.user_id))
    expected, _ = plain.run(case, fresh=True)
    answer = compare(expected, body["data"])
    result.answer[f"{case.name}, after the purge"] = answer
    print(f"  {case.name + ', after the purge':<75} {answer}", flush=True)


def measure_purge(base: str, url: str, args) -> dict:
    """Purge the first day while wrk posts single events; the purge's rate and ingest p99."""
    engine = make_engine(url, statement_timeout_ms=0)
    cutoff = datetime.combine(FIRST_DAY + timedelta(days=1), clock_time.min, UTC)
    expected = retention.count_expired(engine, cutoff)
    outcome: dict = {}

    def purge() -> None:
        began = time.perf_counter()
        outcome["rows"] = retention.purge_expired(engine, cutoff, batch_size=args.purge_batch_size)
        outcome["seconds"] = time.perf_counter() - began

    try:
        runs = run_wrk_during(purge, base, args.duration, args.connections)
    except Exception as exc:
        raise RuntimeError(f"the purge failed: {exc!r}") from exc
    finally:
        engine.dispose()
    if outcome["rows"] != expected:
        raise RuntimeError(f"the purge removed {outcome['rows']} events, {expected} expected")
    figures = {
        "rows": outcome["rows"],
        "seconds": outcome["seconds"],
        "rate": outcome["rows"] / outcome["seconds"],
        "wrk_runs": len(runs),
        "p99_ms": max(run["p99_ms"] for run in runs),
        "rps": statistics.mean(run["rps"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
    }
    print(
        f"  purge of the first day: {figures['rows']:,} events in {figures['seconds']:.1f} s "
        f"({figures['rate']:,.0f} events/s); POST /track during it: worst p99 "
        f"{figures['p99_ms']:.1f} ms over {len(runs)} wrk run(s), {figures['rps']:.0f} req/s",
        flush=True,
    )
    return figures


def typical_user(conn, args, n_events: int) -> str:
    """The first user (user00000, user00001, ...) with at least the average number of events
    and at least one session: a one-user answer that is neither empty nor unusually large."""
    average = n_events / args.users
    for n in range(args.users):
        user_id = f"user{n:05d}"
        count = conn.execute(
            text("SELECT count(*) FROM events WHERE user_id = :u"), {"u": user_id}
        ).scalar()
        if (
            count >= average
            and conn.execute(
                text("SELECT 1 FROM sessions WHERE user_id = :u LIMIT 1"), {"u": user_id}
            ).first()
        ):
            return user_id
    raise RuntimeError("no user with sessions in the data set")


def measure(backend: str, data_sets: list[tuple[str, Result]], args, cases: list[Case]) -> None:
    """Every case on every data set of one backend, each served by its own gunicorn; then, per
    data set, POST /track and the purge."""
    with contextlib.ExitStack() as stack:
        served = []
        for url, result in data_sets:
            engine = make_engine(url, statement_timeout_ms=0)
            stack.callback(engine.dispose)
            with engine.connect() as conn:
                if backend == "PostgreSQL":
                    print("  " + conn.execute(text("SELECT version()")).scalar().split(",")[0])
                result.user_id = typical_user(conn, args, result.events)
                events = conn.execute(
                    text("SELECT count(*) FROM events WHERE user_id = :u"),
                    {"u": result.user_id},
                ).scalar()
                print(f"  {result.label}, one user: {result.user_id} ({events} events)")
            env = {"DATABASE_URL": url}
            base, master = stack.enter_context(gunicorn("wsgi:app", env=env, workers=args.workers))
            served.append(
                Served(base, master, Plain(engine, backend, args, result.user_id), result)
            )
        for case in cases:
            measure_case(case, served, args)
        for s in served:
            s.result.rss_mb = max(worker_rss_mb(s.master) or [0])
        if args.track:
            for (url, _), s in zip(data_sets, served):
                measure_ingest(url, s, args, cases)


def measure_ingest(url: str, s: Served, args, cases: list[Case]) -> None:
    """Single-event POST /track with wrk, the purge under it and the answers after it, then the
    framework ceiling right after, with the same gunicorn configuration."""
    result = s.result
    run_wrk(s.base, 2, args.connections)  # warm-up
    result.track = run_wrk(s.base, args.duration, args.connections)
    result.rss_mb = max(result.rss_mb, *(worker_rss_mb(s.master) or [0]))
    if args.purge:
        result.purge = measure_purge(s.base, url, args)
        result.rss_mb = max(result.rss_mb, *(worker_rss_mb(s.master) or [0]))
        for case in cases:
            if (
                not case.one_user
                and case.week_start == "monday"
                and not case.events
                and case.group_by in ("hour", "week")
            ):
                check_answer(case, s.base, s.plain, args, result)
    result.trivial = measure_wrk("trivial Flask endpoint", "bench.trivial_app:app", {}, args)
    print(
        f"  {result.label}: POST /track {result.track['rps']:.0f} req/s, trivial endpoint "
        f"{result.trivial['rps']:.0f} req/s; worker RSS up to {result.rss_mb:.0f} MB",
        flush=True,
    )


# --- report ------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def print_table(
    results: list[Result], big: Result | None, small: Result | None, cases: list[Case]
) -> None:
    header = ["query"]
    for r in results:
        header += [f"{r.label} API ms", f"{r.label} plain ms", "API ÷ plain"]
    growth = big is not None and small is not None
    if growth:
        header.append(f"API {millions(big.events)} ÷ {millions(small.events)}")
    header.append("answer = plain")
    lines = [header, ["---"] + ["---:"] * (len(header) - 2) + ["---"]]
    for case in cases:
        row = [case.name]
        for r in results:
            api, sql = r.api_ms[case.name], r.sql_ms[case.name]
            row += [ms(api), ms(sql), f"{api / sql:.4f}" if api < sql else f"{api / sql:.2f}"]
        if growth:
            row.append(f"{big.api_ms[case.name] / small.api_ms[case.name]:.2f}×")
        answers = {r.answer[case.name] for r in results}
        row.append(
            "OK"
            if answers <= {"OK"}
            else ", ".join(f"{r.label} {r.answer[case.name]}" for r in results)
        )
        lines.append(row)
    print()
    for line in lines:
        print("| " + " | ".join(line) + " |")

    # The worst case of each endpoint and group_by (over tz, week_start and event).
    print()
    header = ["all users: worst of tz × week_start × event"]
    for r in results:
        header += [f"{r.label} API ms", f"{r.label} plain ms"]
    if growth:
        header.append(f"worst API {millions(big.events)} ÷ {millions(small.events)}")
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for path in ("/metrics", "/sessions"):
        for group_by in GROUP_BYS:
            names = [
                c.name
                for c in cases
                if c.path == path and c.group_by == group_by and not c.one_user
            ]
            row = [f"{path} {group_by} ({len(names)} combinations)"]
            for r in results:
                worst = max(names, key=lambda n: r.api_ms[n])
                row += [
                    f"{ms(r.api_ms[worst])} ({worst.split(' ', 2)[2]})",
                    ms(max(r.sql_ms[n] for n in names)),
                ]
            if growth:
                row.append(f"{max(big.api_ms[n] / small.api_ms[n] for n in names):.2f}×")
            print("| " + " | ".join(row) + " |")

    lines = []
    if any(r.track for r in results):
        for title, cell in (
            ("POST /track req/s (wrk)", lambda r: f"{r.track['rps']:.0f}"),
            ("trivial endpoint req/s (wrk)", lambda r: f"{r.trivial['rps']:.0f}"),
            ("POST /track ÷ trivial", lambda r: f"{r.track['rps'] / r.trivial['rps']:.0%}"),
            (
                "POST /track p50 / p99 ms",
                lambda r: f"{r.track['p50_ms']:.1f} / {r.track['p99_ms']:.1f}",
            ),
            (
                "wrk errors (track / trivial)",
                lambda r: f"{r.track['errors']} / {r.trivial['errors']}",
            ),
        ):
            lines.append([title] + [cell(r) if r.track else "" for r in results])
    if any(r.purge for r in results):
        for title, cell in (
            (
                "purge of the first day: events / s / events per s",
                lambda r: (
                    f"{r.purge['rows']:,} / {r.purge['seconds']:.1f} / {r.purge['rate']:,.0f}"
                ),
            ),
            (
                "POST /track p99 ms during the purge (worst wrk run) / without",
                lambda r: (
                    f"{r.purge['p99_ms']:.1f} / {r.track['p99_ms']:.1f} "
                    f"({r.purge['p99_ms'] / r.track['p99_ms']:.2f}×)"
                ),
            ),
            ("POST /track req/s during the purge", lambda r: f"{r.purge['rps']:.0f}"),
        ):
            lines.append([title] + [cell(r) if r.purge else "" for r in results])
    lines.append(
        ["largest worker RSS MB"]
        + [f"{max(r.rss_mb, (r.trivial or {}).get('rss_mb', 0)):.0f}" for r in results]
    )
    lines.append(
        ["load s / rebuild_aggregates + ANALYZE s"]
        + [f"{r.load_s:.0f} / {r.rebuild_s:.0f}" for r in results]
    )
    print()
    print("| | " + " | ".join(r.label for r in results) + " |")
    print("| --- |" + " ---: |" * len(results))
    for line in lines:
        print("| " + " | ".join(line) + " |")


def check_targets(
    results: list[Result],
    big: Result | None,
    small: Result | None,
    sqlite_small: Result | None,
    cases: list[Case],
) -> None:
    checks = []

    def latency(r: Result, names, limit, what):
        worst = max((r.api_ms[n], n) for n in names)
        checks.append(
            (
                f"{r.label}: {what} ≤ {limit} ms median",
                worst[0] <= limit,
                f"worst {worst[0]:.1f} ms ({worst[1]})",
            )
        )

    all_metrics = [c.name for c in cases if c.path == "/metrics" and not c.one_user]
    all_sessions = [c.name for c in cases if c.path == "/sessions" and not c.one_user]
    one_user = [c.name for c in cases if c.one_user]
    for r in (big, sqlite_small):
        if r is None:
            continue
        latency(r, all_metrics, METRICS_ALL_MS, f"/metrics all users ({len(all_metrics)})")
        latency(r, all_sessions, SESSIONS_ALL_MS, f"/sessions all users ({len(all_sessions)})")
        latency(r, one_user, ONE_USER_MS, "one user, /metrics and /sessions")
    if big is not None and small is not None:
        names = all_metrics + all_sessions
        worst = max((big.api_ms[n] / small.api_ms[n], n) for n in names)
        checks.append(
            (
                f"PostgreSQL: API latency at {millions(big.events)} ≤ {GROWTH_MAX}× "
                f"at {millions(small.events)} (all users)",
                worst[0] <= GROWTH_MAX,
                f"worst {worst[0]:.2f}× ({worst[1]}: {small.api_ms[worst[1]]:.1f} → "
                f"{big.api_ms[worst[1]]:.1f} ms)",
            )
        )
    for r in results:
        if r.track:
            share = r.track["rps"] / r.trivial["rps"]
            checks.append(
                (
                    f"{r.label}: POST /track ≥ {TRACK_SHARE_MIN:.0%} of the trivial endpoint",
                    share >= TRACK_SHARE_MIN,
                    f"{r.track['rps']:.0f} / {r.trivial['rps']:.0f} req/s = {share:.0%}",
                )
            )
        if r.purge:
            ratio = r.purge["p99_ms"] / r.track["p99_ms"]
            checks.append(
                (
                    f"{r.label}: POST /track p99 during the purge ≤ {PURGE_P99_MAX:g}× without",
                    ratio <= PURGE_P99_MAX,
                    f"{r.purge['p99_ms']:.1f} / {r.track['p99_ms']:.1f} ms = {ratio:.2f}×; "
                    f"purge {r.purge['rate']:,.0f} events/s",
                )
            )
    if any(r.rss_mb for r in results):
        rss = max(max(r.rss_mb, (r.trivial or {}).get("rss_mb", 0)) for r in results)
        checks.append((f"worker RSS < {RSS_MAX_MB} MB", rss < RSS_MAX_MB, f"largest {rss:.0f} MB"))
    mismatches = [
        f"{r.label} {n}: {a}"
        for r in results
        for n, a in r.answer.items()
        if not a.startswith("OK")
    ]
    checks.append(
        (
            "every API answer equals the plain one",
            not mismatches,
            "; ".join(mismatches) or f"{sum(len(r.answer) for r in results)} compared",
        )
    )
    print("\nTargets:")
    for title, met, figure in checks:
        print(f"- {title}: {'met' if met else 'MISSED'} ({figure})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=10_000_000, help="events of the large data set (PostgreSQL)"
    )
    parser.add_argument(
        "--small",
        type=int,
        default=1_000_000,
        help="events of the small data set (PostgreSQL and SQLite); 0: none",
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5, help="HTTP requests per query")
    parser.add_argument("--sql-runs", type=int, default=1, help="plain runs per statement")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer combinations: week_start monday, event absent or play",
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gunicorn workers (default: gunicorn.conf.py's one per CPU)",
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--no-track", dest="track", action="store_false", help="skip the POST /track measurement"
    )
    parser.add_argument(
        "--no-purge",
        dest="purge",
        action="store_false",
        help="skip the purge under ingest (needs the POST /track measurement)",
    )
    parser.add_argument(
        "--purge-batch-size",
        type=int,
        default=None,
        help="events deleted per transaction by the purge (default: the purge command's)",
    )
    args = parser.parse_args()
    if args.track and not shutil.which("wrk"):
        sys.exit("wrk is needed for POST /track (apt-get install wrk), or pass --no-track")
    cases = all_cases(args.quick)

    plan = []  # the small data sets first: they are quick and show problems early
    if args.small and not args.no_sqlite:
        plan.append(("SQLite", scratch_sqlite, [args.small]))
    if not args.no_postgres:
        sizes = [args.small, args.events] if args.small and args.small != args.events else []
        plan.append(("PostgreSQL", scratch_postgres, sizes or [args.events]))
    print(
        f"{args.users:,} users, {args.days} days from {FIRST_DAY}; SQLite "
        f"{sqlite3.sqlite_version}; {len(cases)} queries, {args.runs} HTTP runs (median) and "
        f"{args.sql_runs} plain run(s) each",
        flush=True,
    )

    results = []
    for backend, scratch, sizes in plan:
        with contextlib.ExitStack() as stack:
            data_sets = []
            for n_events in sizes:
                result = Result(backend, n_events)
                url = stack.enter_context(scratch())
                load(backend, url, args, n_events, result)
                data_sets.append((url, result))
            measure(backend, data_sets, args, cases)
        results.extend(result for _, result in data_sets)

    def find(backend, n):
        return next((r for r in results if r.backend == backend and r.events == n), None)

    big = find("PostgreSQL", args.events)
    small = find("PostgreSQL", args.small) if args.small != args.events else None
    print_table(results, big, small, cases)
    check_targets(results, big, small, find("SQLite", args.small), cases)


if __name__ == "__main__":
    main()
