"""What a rate-limit count costs in Redis, in one process: each call its own round trip, beside
the calls of concurrent threads grouped into shared round trips (``ratelimits.RedisCounts``),
and beside counts taken ahead a few at a time (``ratelimits.Leases``, a limit the run never
reaches), in the same run.

    .venv/bin/python bench/redis_counts.py [--redis redis://127.0.0.1:6379/0] [--threads 8]
                                           [--calls 1500] [--rounds 3]

Each round, ``--threads`` threads (a gunicorn worker's request threads) each count
``--calls`` requests against three keys, first one script call per request, then through
RedisCounts, then through Leases. Prints calls/s and the process's CPU time per call for each,
and their ratios to a round trip each per round and the medians. Findings:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from analytics.ratelimits import COUNT_SCRIPT, Leases, RedisCounts  # noqa: E402


def measure(count: Callable[[str, int], object], threads: int, calls: int) -> tuple[float, float]:
    """(calls/s, CPU µs per call) of ``threads`` threads making ``calls`` counts each."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"

    def work(n: int) -> None:
        for _ in range(calls):
            count(f"{prefix}:{n % 3}", 3600)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    began, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = threads * calls
    return total / (time.perf_counter() - began), (time.process_time() - cpu) / total * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis)
    script = client.register_script(COUNT_SCRIPT)
    grouped = RedisCounts(client)

    def alone(key: str, window: int) -> object:
        return script(keys=[key], args=[window, 1])

    ratios: dict[str, list[float]] = {"grouped": [], "leased": []}
    for n in range(1, args.rounds + 1):
        leases = Leases(grouped)

        def leased(key: str, window: int, leases: Leases = leases) -> object:
            return leases.count(key, window, 10**12)  # a limit the run never reaches

        rate_alone, cpu_alone = measure(alone, args.threads, args.calls)
        line = f"round {n}: a round trip each {rate_alone:,.0f} calls/s ({cpu_alone:.0f} µs CPU)"
        for name, count in (("grouped", grouped.count), ("leased", leased)):
            rate, cpu = measure(count, args.threads, args.calls)
            ratios[name].append(rate / rate_alone)
            line += f"; {name} {rate:,.0f} calls/s ({cpu:.0f} µs CPU): {ratios[name][-1]:.2f}×"
        print(line, flush=True)
    for name, values in ratios.items():
        print(
            f"{args.threads} threads, {name} ÷ a round trip each, median of {args.rounds} "
            f"rounds: {statistics.median(values):.2f}× the calls per second"
        )
    client.close()


if __name__ == "__main__":
    main()
