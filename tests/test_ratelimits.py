"""Rate limits: per key (``--rate``) and per client address (RATE_LIMIT_ANONYMOUS), the 429 and
the RateLimit headers, what is never limited, and counts shared through Redis."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from analytics.ratelimits import RedisCounts
from tests.helpers import assert_error, bearer, count_events, create_key, free_port

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
