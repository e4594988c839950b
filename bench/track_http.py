"""Single-event POST /track throughput under concurrency, beside the framework ceiling.

    .venv/bin/python bench/track_http.py [--duration 10] [--connections 16] [--rounds 3]
                                         [--workers N] [--no-postgres]

Needs wrk (Debian package ``wrk``) and a PostgreSQL server at BENCH_POSTGRES_URL (default the
local one; use --no-postgres to skip it). Starts gunicorn with the project's gunicorn.conf.py
serving a trivial Flask JSON endpoint (bench/trivial_app.py), the API on a fresh SQLite database
and the API on a fresh PostgreSQL database, then loads each in turn with the same wrk run, for
``--rounds`` rounds, and prints requests/s, latency and the ratio to the trivial endpoint of the
same round (medians over the rounds); then the machine's busy CPU time per request of each
(every process, from ``/proc/stat``) and the trivial endpoint's divided by it, the steadier
reading when throughput swings with the machine's other work. Each API run ends with a
GET /active-users, counted in its time and CPU, which folds what the run's writes left in the
active users' log (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402

from bench.ingest import settle  # noqa: E402
from bench.support import (  # noqa: E402
    busy_cpu_seconds,
    gunicorn,
    scratch_postgres,
    scratch_sqlite,
    service_cpu_seconds,
    worker_rss_mb,
)

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local body = '{"event":"' .. (n % 2 == 0 and "play" or "stop") .. '","user_id":"u' .. (n % 5000)
    .. '","metadata":{"song_id":"s' .. (n % 300) .. '","device":"mobile"}}'
  return wrk.format(nil, "/track", nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.3f %.3f\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def run_wrk(url: str, duration: int, connections: int, roots: list[int] | None = None) -> dict:
    """One wrk run's figures; with ``roots``, also the CPU per request of those processes and
    their children (``own_us``: bench.support.service_cpu_seconds)."""
    busy, own = busy_cpu_seconds(), service_cpu_seconds(roots or [])
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    requests, errors, p50, p99 = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+)", out).groups()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        "rps": rate,
        # The machine's busy CPU per request, every process summed: steadier than req/s on a
        # machine shared with other work.
        "cpu_us": (busy_cpu_seconds() - busy) / max(int(requests), 1) * 1e6,
        "own_us": (service_cpu_seconds(roots or []) - own) / max(int(requests), 1) * 1e6,
        "requests": int(requests),
        "errors": int(errors),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
    }


def run_wrk_during(task, url: str, duration: int, connections: int) -> list[dict]:
    """Run ``task`` in a thread and wrk, run after run, until it ends; the runs' results. An
    exception of ``task`` is raised once wrk has stopped."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            task()
        except BaseException as exc:  # raised below, after wrk stops
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    runs = []
    while worker.is_alive():
        runs.append(run_wrk(url, duration, connections))
    worker.join()
    if failure:
        raise failure[0]
    return runs


def measure(name: str, app: str, env: dict, args) -> dict:
    with gunicorn(app, env=env, workers=args.workers) as (url, master):
        run_wrk(url, 2, args.connections)  # warm-up
        result = run_wrk(url, args.duration, args.connections)
        result["rss_mb"] = max(worker_rss_mb(master) or [0])
    result["name"] = name
    return result


def stored(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM events")).scalar()
    engine.dispose()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each target, taken in turn (medians are reported)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gunicorn workers (default: gunicorn.conf.py's one per CPU)",
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    with contextlib.ExitStack() as stack:
        targets = [("trivial Flask endpoint", "bench.trivial_app:app", None)]
        targets.append(("POST /track, SQLite", "wsgi:app", stack.enter_context(scratch_sqlite())))
        if not args.no_postgres:
            targets.append(
                ("POST /track, PostgreSQL", "wsgi:app", stack.enter_context(scratch_postgres()))
            )
        servers = []
        for name, app, url in targets:
            env = {"DATABASE_URL": url} if url else {}
            base, master = stack.enter_context(gunicorn(app, env=env, workers=args.workers))
            run_wrk(base, 2, args.connections)  # warm-up
            servers.append((name, base, master, url))
        # All servers stay up; the targets are loaded in turn, round after round, so that each
        # round's ratios compare runs a few seconds apart on this shared machine.
        runs: dict[str, list[dict]] = {name: [] for name, *_ in servers}
        for round_number in range(1, args.rounds + 1):
            for name, base, master, url in servers:
                result = run_wrk(base, args.duration, args.connections)
                if url:  # what the writes left in the active users' log, folded, is theirs
                    busy = busy_cpu_seconds()
                    seconds = settle(base)
                    requests = result["requests"]
                    result["rps"] = requests / (requests / result["rps"] + seconds)
                    result["cpu_us"] += (busy_cpu_seconds() - busy) / requests * 1e6
                result["rss_mb"] = max(worker_rss_mb(master) or [0])
                runs[name].append(result)
            ceiling = runs[servers[0][0]][-1]["rps"]
            print(
                f"round {round_number}: "
                + ", ".join(
                    f"{name} {r[-1]['rps']:.0f} req/s ({r[-1]['rps'] / ceiling:.0%})"
                    for name, r in runs.items()
                ),
                flush=True,
            )
        counted = {name: stored(url) for name, _b, _m, url in servers if url}

    trivial = runs[servers[0][0]]
    print(
        f"\n{'target':<26}{'req/s':>9}{'vs trivial':>12}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'worker RSS MB':>15}   (medians of {args.rounds} rounds)"
    )
    for name, results in runs.items():
        share = statistics.median(r["rps"] / t["rps"] for r, t in zip(results, trivial))
        print(
            f"{name:<26}{statistics.median(r['rps'] for r in results):>9.0f}{share:>11.0%} "
            f"{statistics.median(r['p50_ms'] for r in results):>8.1f}"
            f"{statistics.median(r['p99_ms'] for r in results):>9.1f}"
            f"{sum(r['errors'] for r in results):>8}"
            f"{max(r['rss_mb'] for r in results):>15.0f}"
        )
    print("\nthe machine's busy CPU per request: µs, and the trivial endpoint's ÷ this one")
    for name, results in runs.items():
        share = statistics.median(t["cpu_us"] / r["cpu_us"] for r, t in zip(results, trivial))
        print(f"{name:<26}{statistics.median(r['cpu_us'] for r in results):>9.0f}{share:>11.0%}")
    for name, count in counted.items():
        requests = sum(r["requests"] for r in runs[name])
        print(
            f"{name}: {count} events stored (wrk counted {requests} requests in the measured "
            "runs, plus the warm-up)"
        )


if __name__ == "__main__":
    main()
