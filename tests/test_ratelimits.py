"""Rate limits: per key (``--rate``) and per client address (RATE_LIMIT_ANONYMOUS), the 429 and
the RateLimit headers, what is never limited, and counts shared through Redis."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from analytics import ratelimits
from analytics.ratelimits import LEASE_MOST, Leases, RedisCounts
from tests.helpers import assert_error, bearer, count_events, create_key, free_port, wait_for

METRICS = "/metrics?start_date=2025-01-01&end_date=2025-01-31"
EVENT = {"event": "play", "user_id": "u1", "timestamp": "2025-01-02T10:00:00Z"}


def limit_headers(response) -> tuple[int, int, int]:
    return tuple(
        int(response.headers[f"RateLimit-{name}"]) for name in ("Limit", "Remaining", "Reset")
    )


def assert_exceeded(response, limit: int, window: int = 60) -> None:
    """The contract's 429: the envelope, Retry-After within the window, no allowance left."""
    body = assert_error(response, 429, "Rate limit exceeded")
    assert body == {"status": "error", "message": "Rate limit exceeded"}
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= window
    assert limit_headers(response)[:2] == (limit, 0)


def test_a_key_is_held_to_its_rate(make_app):
    app = make_app(AUTH_MODE="reads")
    secret = create_key(app, "metered", "read", rate="3/minute")
    client = app.test_client()
    for remaining in (2, 1, 0):
        response = client.get(METRICS, headers=bearer(secret))
        assert response.status_code == 200
        limit, left, reset = limit_headers(response)
        assert (limit, left) == (3, remaining)
        assert 0 <= reset <= 60
        assert "Retry-After" not in response.headers
    assert_exceeded(client.get(METRICS, headers=bearer(secret)), 3)
    # Another key has its own allowance.
    other = create_key(app, "other", "read", rate="3/minute")
    assert client.get(METRICS, headers=bearer(other)).status_code == 200


def test_a_key_without_a_rate_has_no_limit_of_its_own(make_app):
    app = make_app(AUTH_MODE="reads", RATE_LIMIT_ANONYMOUS="2/minute")
    secret = create_key(app, "free", "read")
    client = app.test_client()
    for _ in range(10):
        response = client.get(METRICS, headers=bearer(secret))
        assert response.status_code == 200
        assert "RateLimit-Limit" not in response.headers


def test_requests_without_a_key_are_held_per_client_address(make_app):
    client = make_app(AUTH_MODE="reads", RATE_LIMIT_ANONYMOUS="2/minute").test_client()
    first = {"REMOTE_ADDR": "203.0.113.1"}
    second = {"REMOTE_ADDR": "203.0.113.2"}
    assert client.post("/track", json=EVENT, environ_base=first).status_code == 200
    # Refused requests count too: a flood of wrong keys is held like any other.
    response = client.get(METRICS, environ_base=first)
    assert response.status_code == 401
    assert limit_headers(response)[:2] == (2, 0)
    assert_exceeded(client.post("/track", json=EVENT, environ_base=first), 2)
    assert client.post("/track", json=EVENT, environ_base=second).status_code == 200


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(make_app):
    client = make_app(RATE_LIMIT_ANONYMOUS="1/minute", TRUSTED_PROXIES=1).test_client()

    def send(forwarded_for: str):
        return client.post("/track", json=EVENT, headers={"X-Forwarded-For": forwarded_for})

    assert send("198.51.100.7").status_code == 200
    assert_exceeded(send("198.51.100.7"), 1)
    assert send("198.51.100.8").status_code == 200


def test_without_a_trusted_proxy_a_forwarded_address_changes_nothing(make_app):
    client = make_app(RATE_LIMIT_ANONYMOUS="1/minute", TRUSTED_PROXIES=0).test_client()
    assert (
        client.post("/track", json=EVENT, headers={"X-Forwarded-For": "198.51.100.7"}).status_code
        == 200
    )
    assert_exceeded(
        client.post("/track", json=EVENT, headers={"X-Forwarded-For": "198.51.100.8"}), 1
    )


def test_health_the_document_and_preflights_are_never_limited(make_app):
    client = make_app(AUTH_MODE="all", RATE_LIMIT_ANONYMOUS="1/minute").test_client()
    for _ in range(5):
        for response in (
            client.get("/health"),
            client.get("/openapi.json"),
            client.options("/track"),
            client.options("/metrics"),
        ):
            assert response.status_code in (200, 204)
            assert "RateLimit-Limit" not in response.headers
    assert client.get(METRICS).headers["RateLimit-Remaining"] == "0"


def test_a_batch_counts_as_one_request(make_app, engine):
    app = make_app()
    secret = create_key(app, "batcher", "ingest", rate="2/minute")
    client = app.test_client()
    response = client.post("/track/batch", json={"events": [EVENT] * 50}, headers=bearer(secret))
    assert response.status_code == 200
    assert limit_headers(response)[:2] == (2, 1)
    assert count_events(engine) == 50


def test_one_allowance_for_every_endpoint(make_app):
    app = make_app()
    secret = create_key(app, "everything", "admin", rate="2/minute")
    client = app.test_client()
    assert client.post("/track", json=EVENT, headers=bearer(secret)).status_code == 200
    assert client.get(METRICS, headers=bearer(secret)).status_code == 200
    assert_exceeded(
        client.post("/track/batch", json={"events": [EVENT]}, headers=bearer(secret)), 2
    )


def test_a_limited_request_stores_nothing(make_app, engine):
    app = make_app(AUTH_MODE="all")
    secret = create_key(app, "once", "ingest", rate="1/hour")
    client = app.test_client()
    assert client.post("/track", json=EVENT, headers=bearer(secret)).status_code == 200
    response = client.post("/track/batch", json={"events": [EVENT] * 3}, headers=bearer(secret))
    assert_exceeded(response, 1, window=3600)
    assert int(response.headers["Retry-After"]) > 60
    assert count_events(engine) == 1


def test_off_means_no_anonymous_limit(make_app):
    client = make_app(RATE_LIMIT_ANONYMOUS=None).test_client()
    for _ in range(30):
        response = client.post("/track", json=EVENT)
        assert response.status_code == 200
        assert "RateLimit-Limit" not in response.headers


def test_in_memory_each_process_counts_alone(make_app):
    # Two apps stand for two worker processes.
    first, second = (make_app(RATE_LIMIT_ANONYMOUS="1/minute").test_client() for _ in range(2))
    assert first.post("/track", json=EVENT).status_code == 200
    assert second.post("/track", json=EVENT).status_code == 200
    assert first.post("/track", json=EVENT).status_code == 429


def test_with_redis_the_processes_share_one_count(make_app, redis_url):
    prefix = f"shared-{uuid.uuid4().hex}"
    workers = [
        make_app(
            AUTH_MODE="reads",
            RATE_LIMIT_STORAGE_URL=redis_url,
            RATE_LIMIT_ANONYMOUS="3/minute",
            RATE_LIMIT_KEY_PREFIX=prefix,
        )
        for _ in range(2)
    ]
    secret = create_key(workers[0], "shared", "read", rate="2/minute")
    first, second = (app.test_client() for app in workers)
    assert first.get(METRICS, headers=bearer(secret)).status_code == 200
    assert second.get(METRICS, headers=bearer(secret)).headers["RateLimit-Remaining"] == "0"
    assert_exceeded(first.get(METRICS, headers=bearer(secret)), 2)

    assert first.post("/track", json=EVENT).status_code == 200
    assert second.post("/track", json=EVENT).status_code == 200
    assert first.post("/track", json=EVENT).status_code == 200
    assert_exceeded(second.post("/track", json=EVENT), 3)


def test_when_redis_does_not_answer_each_process_counts_alone(make_app, engine):
    app = make_app(
        RATE_LIMIT_STORAGE_URL=f"redis://127.0.0.1:{free_port()}/0", RATE_LIMIT_ANONYMOUS="2/minute"
    )
    client = app.test_client()
    assert client.post("/track", json=EVENT).status_code == 200
    assert client.post("/track", json=EVENT).status_code == 200
    assert_exceeded(client.post("/track", json=EVENT), 2)
    assert count_events(engine) == 2


def test_concurrent_counts_share_round_trips_and_stay_exact(redis_url):
    """Calls that arrive while one is in flight go together in the next round trip, and each
    still gets its own count."""
    client = redis.Redis.from_url(redis_url)
    counts = RedisCounts(client)
    key = f"grouped-{uuid.uuid4().hex}"
    sent: list[int] = []
    first_in_flight, others_queued = threading.Event(), threading.Event()
    real_run = counts._run

    def run(group):
        sent.append(len(group))
        if len(sent) == 1:
            first_in_flight.set()
            assert others_queued.wait(10)
        return real_run(group)

    counts._run = run
    results: list[tuple[int, int]] = []

    def call():
        results.append(counts.count(key, 60))

    first = threading.Thread(target=call)
    first.start()
    assert first_in_flight.wait(10)
    others = [threading.Thread(target=call) for _ in range(7)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while len(counts._waiting) < 7:  # every later call waits behind the one in flight
        assert time.monotonic() < deadline, "the later calls did not wait"
        time.sleep(0.01)
    others_queued.set()
    for thread in [first, *others]:
        thread.join(10)
    assert sent == [1, 7]
    assert sorted(count for count, _ in results) == list(range(1, 9))
    assert all(0 < ttl <= 60_000 for _, ttl in results)
    client.delete(key)
    client.close()


def test_a_group_that_fails_fails_each_of_its_callers_and_the_next_group_goes(redis_url):
    client = redis.Redis.from_url(redis_url)
    counts = RedisCounts(client)
    key = f"failing-{uuid.uuid4().hex}"
    real_run = counts._run
    counts._run = lambda group: (_ for _ in ()).throw(redis.ConnectionError("gone"))
    with pytest.raises(redis.ConnectionError):
        counts.count(key, 60)
    counts._run = real_run
    assert counts.count(key, 60)[0] == 1  # nothing in flight is left behind
    client.script_flush()  # a Redis that forgot the script: loaded again, counted once
    assert counts.count(key, 60)[0] == 2
    client.delete(key)
    client.close()


class SpiedCounts(RedisCounts):
    """RedisCounts that records how many counts each call took."""

    def __init__(self, client):
        super().__init__(client)
        self.takes: list[int] = []

    def count(self, key, window, take=1):
        self.takes.append(take)
        return super().count(key, window, take)


class ScriptedCounts:
    """Answers Leases' calls, in call order, with (highest count, ms left); an answer given as
    (an Event, the answer) is held back until the Event is set, so answers come back out of
    order."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.takes: list[int] = []

    def count(self, key, window, take=1):
        self.takes.append(take)
        answer = self.answers.pop(0)
        if isinstance(answer[0], threading.Event):
            assert answer[0].wait(5)
            answer = answer[1]
        return answer


def answered_late(leases: Leases, counts: ScriptedCounts) -> tuple[threading.Thread, list]:
    """A count in a thread of its own, returned once its call to Redis is made."""
    got: list = []
    calls = len(counts.takes)
    thread = threading.Thread(target=lambda: got.append(leases.count("k", 60, 1000)[0]))
    thread.start()
    wait_for(lambda: len(counts.takes) > calls, timeout=5, interval=0.005)
    return thread, got


def test_counts_answered_out_of_order_in_one_window_are_all_kept():
    # Two calls of one window in flight: the later one (counts 4-5) answers first, then the
    # earlier one (2-3). Both calls' spare counts, 3 and 5, stay held and are handed out
    # without asking again.
    gate = threading.Event()
    counts = ScriptedCounts((1, 60_000), (gate, (3, 60_000)), (5, 60_000))
    leases = Leases(counts)
    assert leases.count("k", 60, 1000)[0] == 1
    thread, got = answered_late(leases, counts)
    assert leases.count("k", 60, 1000)[0] == 4
    gate.set()
    thread.join(5)
    assert got == [2]
    assert [leases.count("k", 60, 1000)[0] for _ in range(2)] == [3, 5]
    assert counts.takes == [1, 2, 2]


def test_an_answer_from_a_window_already_over_does_not_replace_the_current_one():
    gate = threading.Event()
    counts = ScriptedCounts((gate, (7, 10)), (1, 60_000), (3, 60_000))
    leases = Leases(counts)
    thread, got = answered_late(leases, counts)  # answered after its window ended
    assert leases.count("k", 60, 1000)[0] == 1  # the next window
    assert leases.count("k", 60, 1000)[0] == 2  # busy: it takes 2-3 and keeps 3
    gate.set()
    thread.join(5)
    assert got == [7]
    assert leases.count("k", 60, 1000)[0] == 3  # still held: no call to Redis
    assert len(counts.takes) == 3


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_a_busy_process_takes_counts_ahead_and_hands_them_out_in_order(redis_client):
    counts = SpiedCounts(redis_client)
    leases, key = Leases(counts), f"leased-{uuid.uuid4().hex}"
    got = [leases.count(key, 60, 10**6) for _ in range(200)]
    assert [count for count, _ in got] == list(range(1, 201))
    assert all(0 < seconds <= 60 for _, seconds in got)
    # One count, then twice as many each call, up to LEASE_MOST: far fewer calls than counts.
    assert counts.takes[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert max(counts.takes) == LEASE_MOST
    assert sum(counts.takes) == int(redis_client.get(key)) < 200 + LEASE_MOST
    redis_client.delete(key)


def test_a_process_that_sees_a_key_seldom_takes_one_count_at_a_time(redis_client, monkeypatch):
    monkeypatch.setattr(ratelimits, "LEASE_BUSY_SECONDS", 0.0)
    counts = SpiedCounts(redis_client)
    leases, key = Leases(counts), f"seldom-{uuid.uuid4().hex}"
    assert [leases.count(key, 60, 1000)[0] for _ in range(5)] == [1, 2, 3, 4, 5]
    assert counts.takes == [1] * 5
    redis_client.delete(key)


def test_near_the_limit_a_process_takes_one_count_then_refuses_without_asking(redis_client):
    counts = SpiedCounts(redis_client)
    leases, key = Leases(counts), f"near-{uuid.uuid4().hex}"
    got = [leases.count(key, 1, 40)[0] for _ in range(45)]
    assert got[:40] == list(range(1, 41))
    assert all(count > 40 for count in got[40:])
    # Never more than a sixteenth of what was left, so Redis counted exactly the limit; the
    # refusals after it asked nothing.
    assert int(redis_client.get(key)) == 40 == sum(counts.takes)
    assert counts.takes[-1] == 1 and len(counts.takes) < 40
    calls = len(counts.takes)
    time.sleep(1.1)  # the window ends: the next count asks again and starts the new one
    assert leases.count(key, 1, 40)[0] == 1
    assert len(counts.takes) == calls + 1
    redis_client.delete(key)


def test_processes_taking_counts_ahead_never_let_more_than_the_limit_through(redis_client):
    """Every count up to the limit that Redis gave out is either handed to a request or still
    held by a process: none is handed out twice, and none past the limit."""
    key, limit = f"shared-{uuid.uuid4().hex}", 300
    processes = [Leases(RedisCounts(redis_client)) for _ in range(2)]
    handed: list[int] = []

    def requests(leases: Leases) -> None:
        for _ in range(250):
            handed.append(leases.count(key, 60, limit)[0])

    threads = [threading.Thread(target=requests, args=(p,)) for p in processes for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    allowed = sorted(count for count in handed if count <= limit)
    held = sorted(count for p in processes for lease in p._leases.values() for count in lease.free)
    assert len(set(allowed)) == len(allowed)  # no count handed out twice
    assert sorted(allowed + held) == list(range(1, limit + 1))
    assert len(handed) == 2000 and len(allowed) >= limit - 2 * LEASE_MOST
    redis_client.delete(key)
