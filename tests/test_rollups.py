"""The pre-aggregated tables stay equal to a recomputation from the events, whatever writes them."""
from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from analytics import rollups
from analytics.models import Event, EventCount, SessionCount, sqlite_timestamp
from analytics.periods import event_keys_json

START = datetime(2025, 3, 1, tzinfo=timezone.utc)


def aggregates(engine) -> tuple[dict, dict]:
    """The two tables, summed over shards, without zero rows."""
    with Session(engine) as session:
        counts: dict = {}
        for row in session.execute(select(EventCount)).scalars():
            key = (row.day, row.event)
            counts[key] = counts.get(key, 0) + row.n
        sessions: dict = {}
        for row in session.execute(select(SessionCount)).scalars():
            n, total = sessions.get(row.day, (0, 0))
            sessions[row.day] = (n + row.sessions, total + row.total_us)
    return ({k: v for k, v in counts.items() if v},
            {k: v for k, v in sessions.items() if v != (0, 0)})


def rebuilt(engine) -> tuple[dict, dict]:
    with Session(engine) as session:
        rollups.rebuild(session)
        session.commit()
    return aggregates(engine)


def assert_exact(engine):
    incremental = aggregates(engine)
    assert incremental == rebuilt(engine)
    return incremental


def random_events(rng: random.Random, n: int, users: int = 6) -> list[dict]:
    names = ["play", "stop", "play", "stop", "pause", "skip"]
    return [{"event": rng.choice(names), "user_id": f"u{rng.randrange(users)}",
             "timestamp": (START + timedelta(seconds=rng.randrange(0, 5 * 86400, 7)))
             .isoformat()} for _ in range(n)]


def test_single_events_in_random_order_keep_aggregates_exact(client, engine):
    rng = random.Random(7)
    for event in random_events(rng, 150):
        assert client.post("/track", json=event).status_code == 200
    counts, sessions = assert_exact(engine)
    assert sum(counts.values()) == 150
    assert sessions  # the history does contain sessions


def at(seconds: int) -> str:
    return (START + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize("size", [1, 25])  # the few-rows insert and the bulk one
def test_a_run_of_events_landing_inside_a_session_splits_it(client, engine, size):
    # play 0 - stop 100 is one session; then, in one batch, a stop at 20 and a play at 50 land
    # between them (a run of two added events, with other users' events around them): the
    # session becomes 0-20 and 50-100.
    others = [{"event": "skip", "user_id": f"x{i}", "timestamp": at(i)} for i in range(size - 1)]
    assert client.post("/track/batch", json={"events": [
        {"event": "play", "user_id": "u", "timestamp": at(0)},
        {"event": "stop", "user_id": "u", "timestamp": at(100)}]}).status_code == 200
    assert assert_exact(engine)[1] == {START.date(): (1, 100_000_000)}
    assert client.post("/track/batch", json={"events": others + [
        {"event": "play", "user_id": "u", "timestamp": at(50)},
        {"event": "stop", "user_id": "u", "timestamp": at(20)}]}).status_code == 200
    assert assert_exact(engine)[1] == {START.date(): (2, 70_000_000)}
    # And a third event after the stop changes nothing; a play at 10 inside 0-20 breaks it.
    assert client.post("/track/batch", json={"events": others + [
        {"event": "play", "user_id": "u", "timestamp": at(200)},
        {"event": "play", "user_id": "u", "timestamp": at(10)}]}).status_code == 200
    assert assert_exact(engine)[1] == {START.date(): (2, 60_000_000)}


def test_batches_and_duplicates_keep_aggregates_exact(client, engine):
    rng = random.Random(11)
    events = random_events(rng, 400)
    for i, event in enumerate(events):
        event["event_id"] = f"id-{i}"
    for chunk in range(0, 400, 100):
        batch = events[chunk:chunk + 100] + events[max(0, chunk - 30):chunk]  # retries
        rng.shuffle(batch)
        response = client.post("/track/batch", json={"events": batch})
        assert response.status_code == 200
    counts, _ = assert_exact(engine)
    assert sum(counts.values()) == 400


def test_purge_keeps_aggregates_exact(app, client, engine):
    rng = random.Random(3)
    for event in random_events(rng, 200):
        assert client.post("/track", json=event).status_code == 200
    with Session(engine) as session:
        ids = list(session.scalars(select(Event.id)))
        old = rng.sample(ids, 80)
        session.execute(Event.__table__.update().where(Event.id.in_(old))
                        .values(received_at=datetime.now(timezone.utc) - timedelta(days=90)))
        session.commit()
    result = app.test_cli_runner().invoke(args=["purge", "--batch-size", "17"])
    assert result.exit_code == 0, result.output
    counts, _ = assert_exact(engine)
    assert sum(counts.values()) == 120


def test_concurrent_writers_keep_aggregates_exact(live_server, engine):
    import http.client

    server = live_server(workers=4)
    rng = random.Random(5)
    events = random_events(rng, 600, users=4)  # few users: many collide on the same sequences

    def send(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for event in chunk:
            conn.request("POST", "/track", body=json.dumps(event),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        conn.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, [events[i::8] for i in range(8)]))
    counts, _ = assert_exact(engine)
    assert sum(counts.values()) == 600


def test_rebuild_from_scratch_matches(client, engine):
    rng = random.Random(9)
    for event in random_events(rng, 100):
        client.post("/track", json=event)
    before = aggregates(engine)
    with Session(engine) as session:
        session.execute(delete(EventCount))
        session.execute(delete(SessionCount))
        session.commit()
    assert aggregates(engine) == ({}, {})
    assert rebuilt(engine) == before


def test_rebuild_command_repairs_counts_changed_behind_the_api(app, client, engine):
    for at in ("2025-03-01T10:00:00Z", "2025-03-01T10:05:00Z"):
        client.post("/track", json={"event": "play", "user_id": "u", "timestamp": at})
    client.post("/track", json={"event": "stop", "user_id": "u",
                                "timestamp": "2025-03-01T10:06:00Z"})
    with Session(engine) as session:  # an operator deletes a play with SQL
        session.execute(delete(Event).where(Event.occurred_at == START.replace(hour=10, minute=5)))
        session.commit()
    result = app.test_cli_runner().invoke(args=["rebuild-aggregates"])
    assert result.exit_code == 0, result.output
    assert "Rebuilt" in result.output
    query = "start_date=2025-03-01&end_date=2025-03-01"
    assert client.get(f"/metrics?{query}").get_json()["data"] == [
        {"date": "2025-03-01", "play": 1, "stop": 1}]
    assert client.get(f"/sessions?{query}").get_json()["data"] == [
        {"date": "2025-03-01", "totalDuration": 360, "sessionCount": 1, "averageDuration": 360}]


def test_read_your_writes_under_concurrent_ingest(live_server):
    """Once POST /track has answered 200, every later query includes the event."""
    import http.client
    import threading

    server = live_server(workers=4)
    stop = threading.Event()

    def background(n):  # other writers, on the same days, all the time
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        i = 0
        while not stop.is_set():
            event = {"event": ("play", "stop", "view")[i % 3], "user_id": f"bg{n}-{i % 5}",
                     "timestamp": f"2025-03-0{1 + i % 3}T10:{i % 60:02d}:00Z"}
            conn.request("POST", "/track", body=json.dumps(event),
                         headers={"Content-Type": "application/json"})
            conn.getresponse().read()
            i += 1
        conn.close()

    def call(conn, method, path, body=None):
        conn.request(method, path, body=json.dumps(body) if body else None,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = json.loads(response.read())
        assert response.status == 200, payload
        return payload

    threads = [threading.Thread(target=background, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        day = "start_date=2025-03-02&end_date=2025-03-02"
        for i in range(1, 31):
            call(conn, "POST", "/track", {"event": "checkpoint", "user_id": "reader",
                                          "timestamp": "2025-03-02T12:00:00Z"})
            [metrics] = call(conn, "GET", f"/metrics?{day}")["data"]
            assert metrics["checkpoint"] == i
            # A session of a user nobody else writes for: its count can only be ours.
            call(conn, "POST", "/track", {"event": "play", "user_id": f"reader{i}",
                                          "timestamp": "2025-03-05T08:00:00Z"})
            call(conn, "POST", "/track", {"event": "stop", "user_id": f"reader{i}",
                                          "timestamp": "2025-03-05T08:00:10Z"})
            [sessions] = call(conn, "GET", "/sessions?start_date=2025-03-05"
                                           "&end_date=2025-03-05")["data"]
            assert sessions["sessionCount"] == i
            assert sessions["totalDuration"] == 10 * i
        conn.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def test_timestamps_sent_as_text_are_the_stored_text(engine, backend):
    # The bulk insert and the neighbour probes pass timestamps to SQLite as text, without the
    # column type: it must be the very text the column stores, or comparisons go wrong (a
    # year before 1000 was once written with three digits).
    if backend != "sqlite":
        pytest.skip("PostgreSQL compares timestamptz values, not text")
    times = [datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
             datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=5))),
             datetime(2025, 3, 1, 23, 59, 59, 999999, tzinfo=timezone.utc)]
    with Session(engine) as session:
        session.add_all(Event(event="play", user_id="u", occurred_at=at, received_at=at)
                        for at in times)
        session.commit()
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT occurred_at FROM events ORDER BY id")).scalars().all()
    assert [sqlite_timestamp(at) for at in times] == stored
    keys = json.loads(event_keys_json("sqlite", [("u", at, i) for i, at in enumerate(times)]))
    assert [key["occurred_at"] for key in keys] == stored
