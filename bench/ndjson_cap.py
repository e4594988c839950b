"""CPU spent on an NDJSON batch over the event cap before its 413: counting lines and stopping
at the cap (what POST /track/batch does), beside parsing every line first and counting after.

The body is 1 MiB of `{}` lines (about 350,000 events, far over BATCH_MAX_EVENTS); both ways
run in this process on the same body, timed with the process's CPU clock.

    .venv/bin/python bench/ndjson_cap.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analytics.api.batch import _ndjson_items  # noqa: E402
from analytics.errors import APIError  # noqa: E402
from analytics.inputs import loads_strict  # noqa: E402

CAP = 1000


def parse_then_count(body: bytes) -> int:
    """The way before: every non-blank line parsed, then the items counted."""
    items = [loads_strict(line) for line in body.split(b"\n") if line.strip()]
    return len(items)


def count_then_stop(body: bytes) -> int:
    try:
        return len(_ndjson_items(body, CAP))
    except APIError as exc:
        assert exc.status == 413
        return -1


def cpu_seconds(function, body: bytes, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        function(body)
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    body = b"{}\n" * (1024 * 1024 // 3)
    before = cpu_seconds(parse_then_count, body, args.repeat)
    after = cpu_seconds(count_then_stop, body, args.repeat)
    print(f"body {len(body)} bytes, {body.count(b'{}')} lines, cap {CAP}; best of {args.repeat}")
    print(f"parse every line, then count: {before * 1000:8.1f} ms CPU")
    print(f"count, stop at the cap:       {after * 1000:8.1f} ms CPU")
    print(f"ratio:                        {before / after:8.0f}x less CPU")


if __name__ == "__main__":
    main()
