"""Fault injection against a live gunicorn, on both backends: workers killed with SIGKILL, the
master stopped with SIGTERM and started again, a writer holding the lock past its bound, the
database killing the server's connections, and the CPU starved. Clients retry with event_id
as the contract tells them to; every event ends up stored exactly once, and no 200 is given
for an event that is not stored.

Only this test's own processes and database connections are ever killed.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.helpers import LiveServer, sessions_lock_key

pytestmark = [pytest.mark.live, pytest.mark.slow]

CLIENTS = 4
GIVE_UP_SECONDS = 90


class Client:
    """Sends events over HTTP and retries each request until it gets a 200 (a refused or
    broken connection, a 5xx: the fate of the event is unknown, so it is sent again)."""

    def __init__(self, port_of):
        self.port_of = port_of  # a callable: the server may move to another process
        self.answers: list[tuple[str, int, dict]] = []  # (path, status, body) of every answer

    def send(self, path: str, body: dict) -> dict:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port_of(), timeout=30)
                try:
                    conn.request(
                        "POST",
                        path,
                        body=json.dumps(body),
                        headers={"Content-Type": "application/json"},
                    )
                    response = conn.getresponse()
                    status, answer = response.status, json.loads(response.read() or b"{}")
                finally:
                    conn.close()
                self.answers.append((path, status, answer))
                if status == 200:
                    return answer
                assert status >= 500, (status, answer)  # a 4xx would be a bug of the test
            except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
                # The answer is lost: whether the events went in is unknown to the client.
                self.answers.append(
                    (path, 0, {"error": repr(exc), "events": len(body.get("events", [body]))})
                )
            assert time.monotonic() < deadline, (
                f"no 200 for {path} in {GIVE_UP_SECONDS} s; last answers: {self.answers[-3:]}"
            )
            time.sleep(random.uniform(0.05, 0.2))


def events_for(client_no: int, count: int) -> list[dict]:
    return [
        {
            "event": random.choice(["play", "stop", "view"]),
            "user_id": f"c{client_no}",
            "event_id": str(uuid.uuid4()),
            "metadata": {"n": n},
        }
        for n in range(count)
    ]


def send_mixed(client: Client, events: list[dict]) -> None:
    """Half of the events one by one (POST /track), half in batches of 10."""
    half = len(events) // 2
    for event in events[:half]:
        client.send("/track", event)
    for start in range(half, len(events), 10):
        client.send("/track/batch", {"events": events[start : start + 10]})


def assert_stored_exactly_once(database_url: str, events: list[dict]) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT user_id, event_id FROM events")).all()
    finally:
        engine.dispose()
    counts = Counter((user_id, event_id) for user_id, event_id in rows)
    wanted = {(event["user_id"], event["event_id"]) for event in events}
    assert set(counts) == wanted, (len(set(counts) - wanted), len(wanted - set(counts)))
    assert max(counts.values()) == 1
    assert len(rows) == len(events)


def run_clients(port_of, per_client: int, during) -> list[dict]:
    """CLIENTS clients each send ``per_client`` events while ``during()`` injects a fault."""
    clients = [Client(port_of) for _ in range(CLIENTS)]
    batches = [events_for(n, per_client) for n in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        futures = [
            pool.submit(send_mixed, client, batch) for client, batch in zip(clients, batches)
        ]
        fault = pool.submit(during)
        for future in futures + [fault]:
            future.result()
    return [event for batch in batches for event in batch]


def test_workers_killed_with_sigkill_lose_and_double_nothing(live_server, database_url):
    server = live_server(workers=2)
    killed = []

    def kill_workers():
        for _ in range(3):
            time.sleep(1.0)
            workers = server.workers()
            if workers:
                killed.append(random.choice(workers))
                os.kill(killed[-1], signal.SIGKILL)

    events = run_clients(lambda: server.port, 120, kill_workers)
    assert killed  # the fault did happen while the clients sent
    assert_stored_exactly_once(database_url, events)


def test_master_stopped_with_sigterm_and_started_again(live_server, database_url):
    server = live_server(workers=2)
    current = {"server": server}

    def restart():
        time.sleep(1.0)
        old = current["server"]
        old.process.send_signal(signal.SIGTERM)
        old.process.wait(timeout=60)
        replacement = LiveServer(
            database_url, workers=2, env={"GUNICORN_BIND": f"127.0.0.1:{old.port}"}
        )
        replacement.port, replacement.url = old.port, old.url
        current["server"] = replacement.start()

    try:
        events = run_clients(lambda: current["server"].port, 120, restart)
    finally:
        if current["server"] is not server:
            current["server"].stop()
    assert_stored_exactly_once(database_url, events)


def test_server_connections_terminated_by_postgresql(live_server, database_url, backend):
    if backend != "postgresql":
        pytest.skip("pg_terminate_backend")
    server = live_server(workers=2)
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    terminated = []

    def terminate():
        # Only the backends of this test's own database, which only this test's server uses.
        for _ in range(4):
            time.sleep(0.7)
            with admin.connect() as conn:
                terminated.extend(
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalars()
                )

    try:
        events = run_clients(lambda: server.port, 120, terminate)
    finally:
        admin.dispose()
    assert any(terminated)  # the server's connections were cut while the clients sent
    assert_stored_exactly_once(database_url, events)


LOCK_WAIT_MS = 800
MARGIN_SECONDS = 5


def test_a_writer_holding_the_lock_past_the_bound_gets_503_in_time(
    live_server, database_url, backend
):
    server = live_server(workers=2, LOCK_WAIT_MS=str(LOCK_WAIT_MS))
    for _ in range(6):  # both workers booted and connected: the clock below is the wait's
        Client(lambda: server.port).send("/track", {"event": "warm", "user_id": "warm"})
    if backend == "sqlite":
        path = make_url(database_url).database + "-writer.lock"
        code = (
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", code, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline().strip() == "held"
        release = holder.stdin.close
    else:
        engine = create_engine(database_url)
        conn = engine.connect()
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": sessions_lock_key("stuck")})
        holder = None

        def release():
            conn.rollback()
            conn.close()
            engine.dispose()

    try:
        started = time.monotonic()
        conn_http = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn_http.request(
            "POST",
            "/track",
            body=json.dumps({"event": "play", "user_id": "stuck"}),
            headers={"Content-Type": "application/json"},
        )
        response = conn_http.getresponse()
        answer = json.loads(response.read())
        took = time.monotonic() - started
        conn_http.close()
    finally:
        release()
        if holder is not None:
            holder.stdout.close()
            holder.wait(timeout=10)
    assert (response.status, answer["message"]) == (503, "Failed to log event")
    assert int(response.getheader("Retry-After")) > 0
    assert took < 2 * LOCK_WAIT_MS / 1000 + MARGIN_SECONDS
    # The lock is free again: the same event goes in.
    assert Client(lambda: server.port).send("/track", {"event": "play", "user_id": "stuck"}) == {
        "status": "success",
        "message": "Event logged.",
    }


# --- exactly once under CPU starvation ---------------------------------------------------------

ROUNDS = 3
SHARED_EVENTS = 200
BURNERS = 6  # busy processes beside the server on a 2-core machine: a load average near 9


def _burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def test_the_same_events_from_four_clients_in_different_orders_under_cpu_starvation(
    live_server, database_url, backend
):
    if backend != "postgresql":
        pytest.skip("the scenario was seen on PostgreSQL, where writers run side by side")
    server = live_server(workers=2)
    context = multiprocessing.get_context("spawn")
    for round_no in range(ROUNDS):
        events = [
            {
                "event": "play",
                "user_id": f"shared{n % 20}",
                "event_id": f"round{round_no}-{n}",
                "timestamp": "2025-01-18T14:30:00Z",
            }
            for n in range(SHARED_EVENTS)
        ]
        orders = [random.Random(seed).sample(events, len(events)) for seed in range(CLIENTS)]
        burners = [
            context.Process(target=_burn, args=(time.monotonic() + 8,)) for _ in range(BURNERS)
        ]
        for burner in burners:
            burner.start()
        clients = [Client(lambda: server.port) for _ in range(CLIENTS)]
        try:
            with ThreadPoolExecutor(CLIENTS) as pool:
                list(
                    pool.map(
                        lambda pair: [
                            pair[0].send("/track/batch", {"events": pair[1][i : i + 25]})
                            for i in range(0, SHARED_EVENTS, 25)
                        ],
                        zip(clients, orders),
                    )
                )
        finally:
            for burner in burners:
                burner.join()
        answers = [answer for client in clients for answer in client.answers]
        # A request may wait for a lock no longer than LOCK_WAIT_MS: under this load some
        # get the contract's 503 (nothing of theirs stored) and are sent again. A client may
        # also give up waiting for an answer (its timeout): then the events may be stored
        # while the client never learns it, and its retry counts them as duplicates.
        lost = sum(body["events"] for _, status, body in answers if status == 0)
        refusals = [(status, body) for _, status, body in answers if status not in (0, 200)]
        assert all(
            refusal == (503, {"status": "error", "message": "Failed to log events"})
            for refusal in refusals
        ), (refusals[:3], server.output()[-3000:])
        assert "Deadlock" not in server.output()
        answers = [(path, status, body) for path, status, body in answers if status == 200]
        accepted = sum(body["accepted"] for _, _, body in answers)
        duplicates = sum(body["duplicates"] for _, _, body in answers)
        assert accepted + duplicates == CLIENTS * SHARED_EVENTS
        # Exactly once as the clients can tell: every event accepted once, except those of
        # answers lost on the way, which the server stored (the count below) all the same.
        assert SHARED_EVENTS - lost <= accepted <= SHARED_EVENTS, (accepted, lost)
        stored = create_engine(database_url)
        with stored.connect() as conn:
            count = conn.execute(
                text("SELECT count(*) FROM events WHERE event_id LIKE :p"),
                {"p": f"round{round_no}-%"},
            ).scalar()
        stored.dispose()
        assert count == SHARED_EVENTS


def test_batches_of_the_same_events_in_different_orders_never_deadlock(
    database_url, backend, monkeypatch
):
    """The cause of the scenario above: batches inserting the same keys in different orders
    waited for each other in a cycle, and each deadlock cost a second and a retry, until the
    retries ran out under load."""
    if backend != "postgresql":
        pytest.skip("SQLite serialises writers")
    from datetime import datetime

    from sqlalchemy.orm import Session

    from analytics import writer
    from analytics.db import make_engine
    from analytics.rows import EventRow

    retried = []
    monkeypatch.setattr(writer, "is_retryable", lambda exc: retried.append(exc) or True)
    engine = make_engine(database_url, lock_wait_ms=30000)
    now = datetime(2025, 1, 18, tzinfo=UTC)
    try:
        for round_no in range(6):
            rows = [
                EventRow(
                    event="play",
                    user_id=f"u{n % 20}",
                    occurred_at=now,
                    received_at=now,
                    metadata_json=None,
                    event_id=f"{round_no}-{n}",
                )
                for n in range(SHARED_EVENTS)
            ]

            def client(seed, rows=rows):
                order = random.Random(seed).sample(rows, len(rows))
                for start in range(0, len(order), 25):
                    with Session(engine) as session:
                        writer.store_events(session, order[start : start + 25])

            with ThreadPoolExecutor(CLIENTS) as pool:
                list(pool.map(client, range(CLIENTS)))
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM events")).scalar()
    finally:
        engine.dispose()
    assert retried == []
    assert stored == 6 * SHARED_EVENTS  # each event once, whichever client's copy won
