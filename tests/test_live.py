"""Against a live gunicorn: concurrent writers lose nothing and store nothing twice."""

from __future__ import annotations

import http.client
import json
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

CLIENTS = 8
EVENTS_PER_CLIENT = 500

pytestmark = [pytest.mark.live, pytest.mark.slow]


def post_events(base_url: str, client_no: int, count: int) -> list[tuple[int, int, str]]:
    """POST ``count`` events over one keep-alive connection; return the failures."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    failures = []
    for seq in range(count):
        body = json.dumps(
            {
                "event": f"e{seq}",
                "user_id": f"client{client_no}",
                "metadata": {"client": client_no, "seq": seq},
            }
        )
        conn.request("POST", "/track", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read().decode()
        if response.status != 200:
            failures.append((client_no, seq, f"{response.status} {payload}"))
    conn.close()
    return failures


def test_concurrent_writers_store_every_event_exactly_once(live_server, engine):
    server = live_server(workers=4)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=CLIENTS, mp_context=context) as pool:
        futures = [
            pool.submit(post_events, server.url, n, EVENTS_PER_CLIENT) for n in range(CLIENTS)
        ]
        failures = [failure for future in futures for failure in future.result()]
    assert failures == []

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT user_id, event FROM events")).all()
    counts = Counter((user_id, event) for user_id, event in rows)
    expected = {(f"client{c}", f"e{s}") for c in range(CLIENTS) for s in range(EVENTS_PER_CLIENT)}
    assert len(rows) == CLIENTS * EVENTS_PER_CLIENT
    assert set(counts) == expected
    assert max(counts.values()) == 1
