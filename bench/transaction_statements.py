"""Where a write transaction's time goes: each statement ``writer.store_events`` sends, timed
from this process, for groups of events like those POST /track's committer stores together.

    .venv/bin/python bench/transaction_statements.py [--group 8] [--transactions 300]
                                                     [--users 5000] [--sqlite]

On a fresh migrated database (PostgreSQL at BENCH_POSTGRES_URL, or SQLite with --sqlite),
``--transactions`` transactions of ``--group`` play/stop events of random users (after as many
for warming up), stored with ``writer.store_events``. Prints the wall time and this process's
CPU time (Python, the driver and the kernel's socket calls) per transaction, then per statement
(by its first words) the time from sending it to having its result, and how many a transaction
sends. BEGIN and COMMIT are not statements here: they make up most of the rest. Findings:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from analytics.db import make_engine  # noqa: E402
from analytics.rows import EventRow  # noqa: E402
from analytics.writer import store_events  # noqa: E402
from bench.support import scratch_postgres, scratch_sqlite  # noqa: E402

METADATA = '{"song_id":"s1","device":"mobile"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=8, help="events per transaction")
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()

    with scratch_sqlite() if args.sqlite else scratch_postgres() as url:
        engine = make_engine(url)
        spent: Counter[str] = Counter()
        sent: Counter[str] = Counter()

        @event.listens_for(engine, "before_cursor_execute")
        def started(conn, cursor, statement, parameters, context, executemany):
            conn.info["statement_began"] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def ended(conn, cursor, statement, parameters, context, executemany):
            words = " ".join(statement.split())[:60]
            spent[words] += time.perf_counter() - conn.info["statement_began"]
            sent[words] += 1

        rng = random.Random(1)

        def transactions(n: int) -> None:
            for _ in range(n):
                now = datetime.now(UTC)
                rows = [
                    EventRow(
                        rng.choice(("play", "stop")),
                        f"u{rng.randrange(args.users)}",
                        now,
                        now,
                        METADATA,
                    )
                    for _ in range(args.group)
                ]
                with Session(engine) as session:
                    store_events(session, rows)

        transactions(args.transactions)  # warm-up: caches, prepared statements, table pages
        spent.clear()
        sent.clear()
        began, cpu = time.perf_counter(), time.process_time()
        transactions(args.transactions)
        n = args.transactions
        wall_ms = (time.perf_counter() - began) / n * 1000
        cpu_ms = (time.process_time() - cpu) / n * 1000
        engine.dispose()

    backend = "SQLite" if args.sqlite else "PostgreSQL"
    print(
        f"{backend}, {n} transactions of {args.group} events: {wall_ms:.2f} ms each, of which "
        f"this process's CPU {cpu_ms:.2f} ms; statements {sum(spent.values()) / n * 1000:.2f} ms"
    )
    for words, seconds in spent.most_common():
        print(f"  {seconds / n * 1000:7.3f} ms  ×{sent[words] / n:.1f}  {words}")


if __name__ == "__main__":
    main()
