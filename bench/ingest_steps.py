"""Where an imported event's time goes: each step of the import path, one after the other.

    .venv/bin/python bench/ingest_steps.py [--events 30000] [--chunk 1000] [--rounds 3]
                                           [--users 1000] [--no-postgres]

In this process, on a fresh migrated database of each backend, the same generated events as
bench/ingest.py (NDJSON lines) go through the import's steps serially, chunk by chunk:

- read: parse the NDJSON lines (``importer.read_ndjson``);
- check: the POST /track rules (``validation.check_events``);
- write (``writer.store_events``, which also takes the writer turn), split into the insert of
  the events (``dialects.of(engine).insert_events``), each aggregate's ``on_insert`` (event
  counts per bucket; session pairing and session totals; active users' log, with the folds
  that fall to some writes), the commit, and a last fold of that log at the end (as a read
  of /active-users would do), so that its work is counted;

then the raw driver write of bench/ingest.py on the same rows, for comparison. Prints the
median over rounds of microseconds per event of each step, and of this process's CPU time
(Python and driver) beside the wall time: the rest is the database server's work (and, on
SQLite, nothing: it runs in this process).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.orm import Session  # noqa: E402

from analytics import dialects, importer, validation, writer  # noqa: E402
from analytics.aggregates import REGISTRY  # noqa: E402
from analytics.db import make_engine  # noqa: E402
from analytics.models import utcnow  # noqa: E402
from bench.ingest import count_rows, driver_rows, empty_table, generate, raw  # noqa: E402
from bench.support import scratch_postgres, scratch_sqlite  # noqa: E402

STEPS = (
    "read",
    "check",
    "write: insert",
    *(f"write: {a.name}" for a in REGISTRY),
    "write: commit",
    "write: the log's last fold",
    "write, total",
)


class Clock:
    """Wall time of each named step, and the process's CPU time over the whole run."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)

    def timed(self, name: str, function):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.wall[name] += time.perf_counter() - start

        return run


def one_round(url: str, lines: bytes, events: list[dict], chunk: int) -> dict[str, float]:
    clock = Clock()
    engine = make_engine(url)
    dialect = dialects.of(engine)
    # Instance attributes shadow the methods for this run only (deleted again below).
    patched = [(dialect, "insert_events"), *((aggregate, "on_insert") for aggregate in REGISTRY)]
    dialect.insert_events = clock.timed("write: insert", dialect.insert_events)
    for aggregate in REGISTRY:
        aggregate.on_insert = clock.timed(f"write: {aggregate.name}", aggregate.on_insert)
    try:
        cpu, start = time.process_time(), time.perf_counter()
        parsed = clock.timed("read", lambda: list(importer.read_ndjson(io.BytesIO(lines))))()
        session = Session(engine, expire_on_commit=False)
        commit = clock.timed("write: commit", session.commit)
        session.commit = commit
        for first in range(0, len(parsed), chunk):
            part = parsed[first : first + chunk]
            checked = clock.timed("check", validation.check_events)(
                ((line.number, line.item) for line in part),
                now=utcnow(),
                metadata_limit=4096,
                nul_free=all(line.nul_free for line in part),
            )
            clock.timed("write, total", writer.store_events)(
                session, [event.row for _, event in checked.prepared]
            )
        # What the writes left in the active users' log, folded as a read would: their cost.
        clock.timed(
            "write, total", clock.timed("write: the log's last fold", writer.fold_activity)
        )(engine)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        session.close()
    finally:
        for owner, name in patched:
            vars(owner).pop(name, None)
        engine.dispose()
    if count_rows(url) != len(events):
        raise RuntimeError("not every event was stored")
    empty_table(url)
    n = len(events)
    result = {name: clock.wall[name] / n * 1e6 for name in STEPS}
    result["all steps (wall)"] = wall / n * 1e6
    result["this process's CPU"] = cpu / n * 1e6
    result["raw driver write"] = raw(url, driver_rows(events), chunk) / n * 1e6
    empty_table(url)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    # Fewer users, longer histories: each chunk then lands all over each user's history.
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    events = generate(args.events, users=args.users)
    lines = "".join(json.dumps(event) + "\n" for event in events).encode()
    backends = [("SQLite", scratch_sqlite)]
    if not args.no_postgres:
        backends.append(("PostgreSQL", scratch_postgres))
    print(
        f"{args.events} events in chunks of {args.chunk}, {args.rounds} rounds; "
        f"µs per event, median of rounds"
    )
    columns = {}
    for name, scratch in backends:
        with scratch() as url:
            rounds = [one_round(url, lines, events, args.chunk) for _ in range(args.rounds)]
        columns[name] = {step: statistics.median(r[step] for r in rounds) for step in rounds[0]}
    print()
    print("| step | " + " | ".join(f"{name} µs" for name in columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for step in next(iter(columns.values())):
        print(
            f"| {step} | " + " | ".join(f"{column[step]:.1f}" for column in columns.values()) + " |"
        )


if __name__ == "__main__":
    main()
