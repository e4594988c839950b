"""Resident memory of gunicorn's workers after large batches, beside their memory at rest.

Serves wsgi:app with gunicorn.conf.py (2 workers x 8 threads) on a fresh database, reads each
worker's RSS once warm, then after rounds of large POST /track/batch requests sent by 8
clients at once (1000 events of about 1 KiB each: a body near the 1 MiB limit, as JSON and as
NDJSON), and prints the largest worker's RSS after each round beside the warm one.

    .venv/bin/python bench/worker_memory.py [--rounds 5] [--database-url URL]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from tests.helpers import LiveServer, migrate  # noqa: E402

CLIENTS = 8
EVENTS = 1000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def body(client: int, round_no: int, ndjson: bool) -> tuple[bytes, str]:
    events = [
        {
            "event": "play",
            "user_id": f"u{client}-{n % 50}",
            "event_id": f"{round_no}-{client}-{n}",
            "timestamp": "2025-01-18T14:30:00Z",
            "metadata": {"page": "x" * 900, "n": n},
        }
        for n in range(EVENTS)
    ]
    if ndjson:
        return "\n".join(json.dumps(e) for e in events).encode(), "application/x-ndjson"
    return json.dumps({"events": events}).encode(), "application/json"


def post(port: int, data: bytes, content_type: str) -> int:
    """POST a batch; a 503 (a writer held the database past LOCK_WAIT_MS) is sent again, as
    a client would after Retry-After."""
    for _ in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", "/track/batch", body=data, headers={"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        if response.status != 503:
            return response.status
        time.sleep(0.5)
    return response.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", help="a migrated database (default: a new SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{folder}/bench.db"
        if not args.database_url:
            migrate(url)
        server = LiveServer(url, workers=2, env={"GUNICORN_THREADS": "8"}).start()
        try:
            small = json.dumps({"events": [{"event": "warm", "user_id": "w"}]}).encode()
            for _ in range(20):  # warm: every worker has served and imported everything
                post(server.port, small, "application/json")
            workers = server.workers()
            warm = max(rss_mb(pid) for pid in workers)
            print(f"workers {len(workers)}, warm RSS (largest) {warm:.1f} MB")
            print("round  body     largest RSS MB  x warm")
            for round_no in range(args.rounds):
                ndjson = bool(round_no % 2)
                bodies = [body(client, round_no, ndjson) for client in range(CLIENTS)]
                with ThreadPoolExecutor(CLIENTS) as pool:
                    statuses = list(pool.map(lambda b: post(server.port, *b), bodies))
                assert set(statuses) == {200}, statuses
                largest = max(rss_mb(pid) for pid in server.workers())
                print(
                    f"{round_no + 1:5d}  {'ndjson' if ndjson else 'json  '}  "
                    f"{largest:14.1f}  {largest / warm:6.2f}"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "warning")
    main()
