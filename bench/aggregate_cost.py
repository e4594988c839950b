"""What one aggregate costs ingest: POST /track/batch and single-event POST /track with every
aggregate, beside the same server without that one, in the same run.

    .venv/bin/python bench/aggregate_cost.py [--aggregate active_users] [--events 50000]
                                             [--batch 1000] [--clients 4] [--duration 8]
                                             [--connections 16] [--rounds 3] [--no-postgres]
                                             [--in-time-order]

For each backend (SQLite, then PostgreSQL), two gunicorn servers on two fresh databases stay up:
``wsgi:app`` and bench/app_without.py without ``--aggregate``. Each round sends the same
batches (bench/ingest.py's events: 1,000 users, five names, 20 days, each batch spread over
them all; with ``--in-time-order`` sorted by time first, so that each batch holds a stretch of
time as a client's buffer or a time-ordered import does) to each in turn, then
loads each in turn with wrk's single-event POST /track (bench/track_http.py's script, 5,000
users), emptying the tables in between; every stored row is counted. Each load ends with a
GET /active-users, counted in its time and CPU, which folds what the writes left in the
active users' log (docs/architecture.md). Prints events/s and
requests/s per round and the median over rounds of each round's ratio (with / without): the
cost of the aggregate is 1 minus that ratio. Beside it, the same ratio from the CPU each event
costs the service's own processes (the gunicorn master and workers, and PostgreSQL's
processes; ``bench.support.service_cpu_seconds``), without's ÷ with's: other guests of a shared
machine add nothing to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import count_rows, empty_table, generate, post_batches, settle  # noqa: E402
from bench.support import (  # noqa: E402
    gunicorn,
    pids_named,
    scratch_postgres,
    scratch_sqlite,
    service_cpu_seconds,
)
from bench.track_http import run_wrk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aggregate", default="active_users")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--in-time-order", action="store_true")
    args = parser.parse_args()
    events = generate(args.events)
    if args.in_time_order:
        events.sort(key=lambda event: event["timestamp"])
    bodies = [
        json.dumps({"events": events[i : i + args.batch]}).encode()
        for i in range(0, len(events), args.batch)
    ]
    backends = [("SQLite", scratch_sqlite)]
    if not args.no_postgres:
        backends.append(("PostgreSQL", scratch_postgres))
    summary = []
    for backend, scratch in backends:
        with contextlib.ExitStack() as stack:
            servers = {}
            for label, app, env in (
                ("with", "wsgi:app", {}),
                ("without", "bench.app_without:app", {"BENCH_WITHOUT": args.aggregate}),
            ):
                url = stack.enter_context(scratch())
                base, master = stack.enter_context(gunicorn(app, env={"DATABASE_URL": url, **env}))
                # The service's own CPU: the server's processes and, on PostgreSQL, the
                # database's (both servers share it; the idle one's sessions cost nothing).
                roots = [master.pid, *(pids_named("postgres") if backend == "PostgreSQL" else [])]
                post_batches(base, [json.dumps({"events": events[:1]}).encode()] * 8, 4)
                run_wrk(base, 2, args.connections)  # warm-up
                time.sleep(1)  # requests wrk gave up on at its deadline are still answered
                empty_table(url)
                servers[label] = (base, url, roots)
            ratios: dict[str, list[float]] = {"batch": [], "track": []}
            cpu_ratios: dict[str, list[float]] = {"batch": [], "track": []}
            for number in range(1, args.rounds + 1):
                rates, cpu = {}, {}
                for label, (base, url, roots) in servers.items():
                    own = service_cpu_seconds(roots)
                    seconds = post_batches(base, bodies, args.clients) + settle(base)
                    cpu[("batch", label)] = (service_cpu_seconds(roots) - own) / len(events)
                    stored = count_rows(url)
                    if stored != len(events):
                        raise RuntimeError(f"{backend} {label}: {stored} of {len(events)} stored")
                    empty_table(url)
                    rates[("batch", label)] = len(events) / seconds
                for label, (base, url, roots) in servers.items():
                    result = run_wrk(base, args.duration, args.connections, roots)
                    if result["errors"]:
                        raise RuntimeError(f"{backend} {label}: {result['errors']} wrk errors")
                    time.sleep(1)
                    own = service_cpu_seconds(roots)
                    settling = settle(base)
                    settling_us = (service_cpu_seconds(roots) - own) * 1e6
                    empty_table(url)
                    requests = result["requests"]
                    rates[("track", label)] = requests / (requests / result["rps"] + settling)
                    cpu[("track", label)] = result["own_us"] + settling_us / requests
                for path in ratios:
                    ratios[path].append(rates[(path, "with")] / rates[(path, "without")])
                    cpu_ratios[path].append(cpu[(path, "without")] / cpu[(path, "with")])
                print(
                    f"  {backend} round {number}: "
                    + ", ".join(
                        f"{path} {label} {rate:,.0f}/s" for (path, label), rate in rates.items()
                    ),
                    flush=True,
                )
            for path, values in ratios.items():
                summary.append((backend, path, values, cpu_ratios[path]))
    print(
        f"\n| backend | path | with {args.aggregate} / without (median of rounds) | cost "
        "| by the service's CPU per event | cost |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for backend, path, values, cpu_values in summary:
        name = "POST /track/batch" if path == "batch" else "POST /track"
        cells = []
        for figures in (values, cpu_values):
            ratio = statistics.median(figures)
            listed = ", ".join(f"{v:.0%}" for v in figures)
            cells.append(f"{ratio:.0%} ({listed}) | {1 - ratio:.0%}")
        print(f"| {backend} | {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
