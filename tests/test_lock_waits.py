"""Bounded waits on the write path: a writer stuck holding a lock makes the requests that need
it answer 503 with Retry-After within the configured wait, and only those."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from analytics.errors import is_unreachable
from tests.helpers import SUCCESS, assert_error, sessions_lock_key, stored

LOCK_WAIT_MS = 500
# The answer is due after the wait; what is added covers a loaded machine, not the wait.
MARGIN_SECONDS = 4


@pytest.fixture
def bounded_app(make_app):
    return make_app(LOCK_WAIT_MS=LOCK_WAIT_MS, TRACK_WAIT_SECONDS=5)


def timed(call):
    """Run ``call`` in a thread; (its result, seconds taken), or a failure after 30 s instead of
    hanging the suite on a wait without a bound."""
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        future = pool.submit(call)
        try:
            return future.result(timeout=30), time.monotonic() - started
        except TimeoutError:
            pytest.fail("no answer within 30 s: the wait has no bound")


def assert_busy(response, message: str):
    """The contract's 503 for a wait past its bound: the message and a Retry-After."""
    assert assert_error(response, 503, message) == {"status": "error", "message": message}
    assert int(response.headers["Retry-After"]) > 0


@pytest.fixture
def foreign_writer(database_url, backend):
    """Another process holding SQLite's writer turn (as a suspended purge would) until the
    test ends."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL has no writer turn")
    path = make_url(database_url).database + "-writer.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    yield holder
    holder.stdin.close()
    holder.stdout.close()
    holder.wait(timeout=10)


def test_a_held_writer_turn_is_503_in_time_and_reads_go_on(bounded_app, foreign_writer, engine):
    client = bounded_app.test_client()
    response, took = timed(lambda: client.post("/track", json={"event": "play", "user_id": "u"}))
    assert_busy(response, "Failed to log event")
    assert took < LOCK_WAIT_MS / 1000 + MARGIN_SECONDS
    response, took = timed(
        lambda: client.post("/track/batch", json={"events": [{"event": "play", "user_id": "u"}]})
    )
    assert_busy(response, "Failed to log events")
    assert took < LOCK_WAIT_MS / 1000 + MARGIN_SECONDS
    health, _ = timed(lambda: client.get("/health"))
    assert health.status_code == 200
    metrics, _ = timed(lambda: client.get("/metrics?start_date=2025-01-01&end_date=2025-01-02"))
    assert metrics.status_code == 200
    assert stored(engine) == []

    foreign_writer.stdin.close()  # the stuck writer goes on: so do the others
    foreign_writer.wait(timeout=10)
    response, _ = timed(lambda: client.post("/track", json={"event": "play", "user_id": "u"}))
    assert response.get_json() == SUCCESS
    assert len(stored(engine)) == 1


def test_a_user_locked_elsewhere_fails_only_that_users_event(
    bounded_app, backend, engine, database_url
):
    if backend != "postgresql":
        pytest.skip("SQLite has no per-user locks")
    holder = create_engine(database_url)
    with holder.connect() as conn:
        conn.execute(text("BEGIN"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": sessions_lock_key("stuck")})
        client = bounded_app.test_client()
        users = ["stuck", *(f"free{n}" for n in range(5))]
        barrier = threading.Barrier(len(users))

        def send(user):
            barrier.wait()
            return client.post("/track", json={"event": "play", "user_id": user})

        with ThreadPoolExecutor(len(users)) as pool:
            started = time.monotonic()
            answers = dict(zip(users, pool.map(send, users)))
            took = time.monotonic() - started
        conn.execute(text("ROLLBACK"))
    holder.dispose()
    assert_busy(answers["stuck"], "Failed to log event")
    for user in users[1:]:
        assert answers[user].get_json() == SUCCESS, user
    # The shared transaction waits once, then the stuck event alone waits again.
    assert took < 2 * LOCK_WAIT_MS / 1000 + MARGIN_SECONDS
    assert sorted(row.user_id for row in stored(engine)) == sorted(users[1:])


def test_a_lock_timeout_is_not_unreachable(backend, database_url):
    if backend != "postgresql":
        pytest.skip("PostgreSQL's lock_timeout")
    holder, waiter = create_engine(database_url), create_engine(database_url)
    with holder.connect() as held, waiter.connect() as conn:
        held.execute(text("BEGIN"))
        held.execute(text("SELECT pg_advisory_xact_lock(42)"))
        conn.execute(text("SET lock_timeout = 100"))
        with pytest.raises(OperationalError) as caught:
            conn.execute(text("SELECT pg_advisory_xact_lock(42)"))
        held.execute(text("ROLLBACK"))
    holder.dispose()
    waiter.dispose()
    assert caught.value.orig.sqlstate == "55P03"  # the driver's own lock_not_available
    assert not is_unreachable(caught.value)


def test_a_read_that_must_fold_waits_for_the_turn_in_bounds(bounded_app, foreign_writer, engine):
    """GET /active-users folds the active users' log first, which on SQLite takes the writer
    turn: held elsewhere, the read is a 503 within the wait; with nothing to fold, or with
    ``event`` (read from the events), it is answered."""
    client = bounded_app.test_client()
    query = "/active-users?start_date=2025-01-01&end_date=2025-01-02"
    assert timed(lambda: client.get(query))[0].status_code == 200  # an empty log: no fold
    with engine.begin() as conn:  # a pair a writer logged (SQLite's own lock is free)
        conn.execute(text("INSERT INTO activity_log (user_id, bucket) VALUES ('u', 0)"))
    response, took = timed(lambda: client.get(query))
    assert response.status_code == 503
    assert response.get_json()["status"] == "error"
    assert int(response.headers["Retry-After"]) > 0
    assert took < LOCK_WAIT_MS / 1000 + MARGIN_SECONDS
    assert timed(lambda: client.get(query + "&event=play"))[0].status_code == 200

    foreign_writer.stdin.close()
    foreign_writer.wait(timeout=10)
    assert timed(lambda: client.get(query))[0].status_code == 200
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM activity_log")).scalar() == 0
