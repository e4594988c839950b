"""The active users' fold on PostgreSQL with many users, in random order, and the log's
statistics as autovacuum often leaves them: analysed just after a fold emptied the log.

    .venv/bin/python bench/fold.py [--users 100000] [--events 100000] [--pairs 32768]

On a fresh migrated database, ``--events`` events of ``--users`` users (bench/ingest.py's:
five names, the last 20 days, in random order) go in through POST /track/batch (Flask's test
client; the folding thread folds as it would in service), then the empty log is analysed and
``--pairs`` more events are logged and folded: first ``FOLD_CHUNK`` pairs a transaction (as
SQLite's folding thread does, and PostgreSQL's did), then, with as many new events again,
``active_users.fold_chunk`` pairs a transaction (PostgreSQL's thread). Prints, for each, the
seconds of the whole fold and of its longest transaction: what a delete, or a read that must
fold first, may wait for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analytics import create_app, dialects, writer  # noqa: E402
from analytics.aggregates import active_users  # noqa: E402
from analytics.db import make_engine  # noqa: E402
from bench.ingest import generate  # noqa: E402
from bench.support import scratch_postgres  # noqa: E402


def post(client, batch: list[dict]) -> None:
    for first in range(0, len(batch), 1000):
        body = json.dumps({"events": batch[first : first + 1000]})
        answer = client.post("/track/batch", data=body, content_type="application/json")
        if answer.status_code != 200:
            raise RuntimeError(f"POST /track/batch: {answer.status_code}")


def fold(engine, chunk: int) -> tuple[float, float]:
    """Seconds of the whole fold of the log, chunk by chunk, and of its longest transaction."""
    dialect = dialects.of(engine)
    took = []
    while True:
        start = time.perf_counter()
        with engine.begin() as conn:
            dialect.take_locks(conn, active_users.fold_locks())
            moved = dialect.fold_activity(conn, chunk)
        took.append(time.perf_counter() - start)
        if moved < chunk:
            return sum(took), max(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=32_768)
    args = parser.parse_args()
    with scratch_postgres() as url:
        os.environ["DATABASE_URL"] = url
        client = create_app({"TESTING": True}).test_client()
        post(client, generate(args.events, seed=1, users=args.users))
        if not writer.FOLDER.wait_idle(600):
            raise RuntimeError("the folding thread did not finish")
        writer.FOLDER.wake = lambda engine: None  # from here, only this script folds
        # A fold may take longer than a request's statement timeout here: it is what is measured.
        engine = make_engine(url, statement_timeout_ms=0)
        writer.fold_activity(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE activity_log")
        dialect = dialects.of(engine)
        print(f"{args.users} users, {args.events} events before, {args.pairs} new events a fold")
        for seed, label, chunk in (
            (2, "FOLD_CHUNK", active_users.FOLD_CHUNK),
            (3, "fold_chunk", active_users.fold_chunk(dialect)),
        ):
            post(client, generate(args.pairs, seed=seed, users=args.users))
            whole, longest = fold(engine, chunk)
            print(
                f"  {label} ({chunk} pairs a transaction): {whole:.2f} s, "
                f"longest transaction {longest:.2f} s"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
