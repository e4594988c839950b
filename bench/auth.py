"""What access keys and rate limits cost: POST /track and GET /metrics throughput with keys off,
with a valid key, and with a rate limit counted in memory and in Redis, side by side.

    .venv/bin/python bench/auth.py [--duration 5] [--connections 16] [--rounds 3]
                                   [--workers N] [--postgres] [--redis redis://127.0.0.1:6379/0]

Needs wrk (Debian package ``wrk``) and, for the Redis row, a Redis server (default the local
one). On one fresh database (SQLite, or PostgreSQL at BENCH_POSTGRES_URL with --postgres), two
keys are made with ``flask keys create``: one without a rate and one with a rate far above what
the run reaches, so that every request is counted but none refused. Four gunicorn servers with
the project's gunicorn.conf.py then serve the same database:

- keys off: AUTH_MODE=open, RATE_LIMIT_ANONYMOUS=off (the default in development);
- valid key: AUTH_MODE=all, each request with the key without a rate;
- limit, memory: AUTH_MODE=all, the rated key, counts in each process's memory;
- limit, Redis: the same with RATE_LIMIT_STORAGE_URL naming the Redis server.

Each round loads every server in turn with the same wrk run, per endpoint (the order of the
servers turning from round to round); the figures are medians over the rounds, and each ratio
the median of the ratios to keys off within the same round. A second table gives the machine's
busy CPU time per request during each run (every process, ``/proc/stat``) and keys off's
divided by it. A third gives the CPU time per request of the service's own processes (the
gunicorn master and workers, the Redis server, PostgreSQL's processes, from ``/proc/<pid>/stat``)
and keys off's divided by it: what the other guests of a shared machine do adds to neither
this time nor the requests, so it is the steadiest reading of what a configuration costs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support import (  # noqa: E402
    ROOT,
    busy_cpu_seconds,
    gunicorn,
    pids_named,
    scratch_postgres,
    scratch_sqlite,
    service_cpu_seconds,
)

TRACK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
local n = 0
request = function()
  n = n + 1
  local body = '{{"event":"' .. (n % 2 == 0 and "play" or "stop") .. '","user_id":"u' .. (n % 5000)
    .. '","metadata":{{"song_id":"s' .. (n % 300) .. '","device":"mobile"}}}}'
  return wrk.format(nil, "/track", nil, body)
end
"""
METRICS_SCRIPT = r"""
{auth}
request = function()
  return wrk.format("GET", "/metrics?start_date={day}&end_date={day}&group_by=day")
end
"""
DONE = r"""
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout))
end
"""
# Far above what wrk reaches on this machine: every request is counted, none refused.
UNREACHED_RATE = "100000000/hour"


def create_key(database_url: str, name: str, *options: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "keys",
            "create",
            name,
            "--scope",
            "admin",
            *options,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": database_url},
    )
    return done.stdout.splitlines()[-1]


def run_wrk(
    url: str, script: str, duration: int, connections: int, roots: list[int]
) -> tuple[float, float, float]:
    """(requests/s, the machine's busy CPU µs per request, the CPU µs per request of the
    processes ``roots`` and their children) of one wrk run."""
    busy, own = busy_cpu_seconds(), service_cpu_seconds(roots)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as file:
        file.write(script + DONE)
        file.flush()
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", file.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    requests, errors = map(int, re.search(r"RESULT (\d+) (\d+)", out).groups())
    if errors:
        # A refused or failed request would measure something else than the path under test.
        raise SystemExit(f"{errors} of {requests} requests failed against {url}:\n{out}")
    cpu_us = (busy_cpu_seconds() - busy) / requests * 1e6
    own_us = (service_cpu_seconds(roots) - own) / requests * 1e6
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), cpu_us, own_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gunicorn workers (default: gunicorn.conf.py's one per CPU)",
    )
    parser.add_argument(
        "--postgres", action="store_true", help="PostgreSQL at BENCH_POSTGRES_URL instead of SQLite"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(scratch_postgres() if args.postgres else scratch_sqlite())
        plain = create_key(url, "bench")
        rated = create_key(url, "bench-rated", "--rate", UNREACHED_RATE)
        common = {"DATABASE_URL": url, "RATE_LIMIT_ANONYMOUS": "off"}
        configurations = [
            ("keys off", {"AUTH_MODE": "open"}, None),
            ("valid key", {"AUTH_MODE": "all"}, plain),
            ("limit, memory", {"AUTH_MODE": "all"}, rated),
            ("limit, Redis", {"AUTH_MODE": "all", "RATE_LIMIT_STORAGE_URL": args.redis}, rated),
        ]
        day = datetime.now(UTC).date().isoformat()
        servers = []
        for name, env, secret in configurations:
            base, master = stack.enter_context(
                gunicorn("wsgi:app", env={**common, **env}, workers=args.workers)
            )
            auth = f'wrk.headers["Authorization"] = "Bearer {secret}"' if secret else ""
            scripts = {
                "POST /track": TRACK_SCRIPT.format(auth=auth),
                "GET /metrics": METRICS_SCRIPT.format(auth=auth, day=day),
            }
            # Every server's CPU counts Redis's and the database's, whether it uses them or not.
            roots = [master.pid, *pids_named("redis-server")]
            if args.postgres:
                roots += pids_named("postgres")
            for script in scripts.values():
                run_wrk(base, script, 1, args.connections, roots)  # warm-up
            servers.append((name, base, scripts, roots))

        endpoints = ("POST /track", "GET /metrics")
        rates = {(name, endpoint): [] for name, *_ in servers for endpoint in endpoints}
        cpu = {(name, endpoint): [] for name, *_ in servers for endpoint in endpoints}
        own = {(name, endpoint): [] for name, *_ in servers for endpoint in endpoints}
        for round_number in range(args.rounds):
            order = servers[round_number % len(servers) :] + servers[: round_number % len(servers)]
            for endpoint in endpoints:
                for name, base, scripts, roots in order:
                    rate, cpu_us, own_us = run_wrk(
                        base, scripts[endpoint], args.duration, args.connections, roots
                    )
                    rates[name, endpoint].append(rate)
                    cpu[name, endpoint].append(cpu_us)
                    own[name, endpoint].append(own_us)
            print(
                f"round {round_number + 1}: "
                + "; ".join(
                    f"{endpoint} "
                    + ", ".join(f"{name} {rates[name, endpoint][-1]:.0f}" for name, *_ in servers)
                    for endpoint in endpoints
                ),
                flush=True,
            )

    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"\n{backend}, {args.connections} connections, medians of {args.rounds} rounds of "
        f"{args.duration} s"
    )
    print(f"{'':<16}" + "".join(f"{endpoint:>24}" for endpoint in endpoints))
    table(servers, endpoints, rates, "req/s", "vs keys off", lambda mine, off: mine / off)
    # Throughput swings with what else the machine runs; the CPU a request costs (the
    # server's, the database's, Redis's and wrk's, summed over the cores) much less. On a
    # machine whose cores are all busy, throughput goes as its inverse.
    print("\nthe machine's busy CPU per request: µs, and keys off's ÷ this one (medians)")
    table(servers, endpoints, cpu, "CPU µs", "keys off ÷", lambda mine, off: off / mine)
    # The machine's CPU still counts other guests' work on a shared host; the service's own
    # processes' does not, and is what bounds its throughput once its cores are all busy.
    print(
        "\nthe service's own CPU per request (gunicorn, Redis, PostgreSQL): µs, and keys off's "
        "÷ this one (medians)"
    )
    table(servers, endpoints, own, "CPU µs", "keys off ÷", lambda mine, off: off / mine)


def table(servers, endpoints, figures, unit: str, versus: str, ratio_of) -> None:
    """A row per server: per endpoint the median figure and the median of the rounds' ratios
    to keys off."""
    print(f"{'':<16}" + f"{unit:>12}{versus:>12}" * len(endpoints))
    for name, *_ in servers:
        cells = []
        for endpoint in endpoints:
            mine, off = figures[name, endpoint], figures["keys off", endpoint]
            ratio = statistics.median(ratio_of(m, o) for m, o in zip(mine, off))
            cells.append(f"{statistics.median(mine):>12.0f}{ratio:>12.0%}")
        print(f"{name:<16}" + "".join(cells))


if __name__ == "__main__":
    main()
