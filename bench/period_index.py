"""How a bucket finds its period: arithmetic against the search among the bounds, side by side.

    .venv/bin/python bench/period_index.py [--rounds 12] [--no-postgres]

Fills `event_hours` of fresh SQLite and PostgreSQL databases with 30 days × 20 event names
(14,880 rows of four quarter hours), then runs the /metrics statement of `analytics.reports`
for hour, day and week in Asia/Kathmandu, alternately with the arithmetic form (runs of one
length) and with the search form (`period_index`), and prints the medians in ms and their
ratio. Findings: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time as clock
from dataclasses import replace
from datetime import UTC, date, datetime, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from analytics import reports  # noqa: E402
from analytics.db import make_engine  # noqa: E402
from analytics.models import QUARTERS, EventHour  # noqa: E402
from analytics.periods import bucket_of, local_periods  # noqa: E402
from bench.data import FIRST_DAY  # noqa: E402
from bench.support import scratch_postgres, scratch_sqlite  # noqa: E402

DAYS, NAMES = 30, 20


def fill(engine) -> None:
    rng = random.Random(1)
    first = bucket_of(datetime.combine(FIRST_DAY, time.min, tzinfo=UTC))
    rows = [
        {
            "bucket": hour,
            "event": f"event_{n:02d}",
            "shard": 0,
            **{name: rng.randint(1, 50) for name in QUARTERS},
        }
        for hour in range(first - 96, first + (DAYS + 1) * 96, len(QUARTERS))
        for n in range(NAMES)
    ]
    with engine.begin() as conn:
        conn.execute(insert(EventHour), rows)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE event_hours"
            )


def measure(url: str, rounds: int) -> dict:
    engine = make_engine(url, statement_timeout_ms=0)
    fill(engine)
    results = {}
    for group_by in ("hour", "day", "week"):
        query = reports.PeriodQuery(
            FIRST_DAY,
            date.fromordinal(FIRST_DAY.toordinal() + DAYS - 1),
            group_by,
            "Asia/Kathmandu",
        )
        regular = local_periods(query.start, query.end, query.tz, group_by, 0)
        searched = replace(regular)
        searched.__dict__["step"] = None  # the same runs, found by the search
        times: dict[str, list[float]] = {"arithmetic": [], "search": []}
        with Session(engine) as session:
            for _ in range(rounds):
                for name, periods in (("arithmetic", regular), ("search", searched)):
                    began = clock.perf_counter()
                    session.execute(
                        *reports.statement_for(session, query, "/metrics", periods)
                    ).all()
                    times[name].append((clock.perf_counter() - began) * 1000)
        results[group_by] = {name: statistics.median(values) for name, values in times.items()}
    engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    backends = [("SQLite", scratch_sqlite)]
    if not args.no_postgres:
        backends.append(("PostgreSQL", scratch_postgres))
    print("| backend | group_by | arithmetic ms | search ms | arithmetic ÷ search |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, scratch in backends:
        with scratch() as url:
            for group_by, medians in measure(url, args.rounds).items():
                print(
                    f"| {name} | {group_by} | {medians['arithmetic']:.1f} | "
                    f"{medians['search']:.1f} | "
                    f"{medians['arithmetic'] / medians['search']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
