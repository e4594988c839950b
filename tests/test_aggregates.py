"""The aggregates stay equal to a recomputation from the events, whatever writes them, and every
aggregate of the registry hears of every write."""

from __future__ import annotations

import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from analytics import aggregates as registry_module
from analytics import dialects, retention, writer
from analytics.dialects import Lock
from analytics.models import (
    Event,
    EventHour,
    PlayStopSession,
    SessionBucket,
    UserBitmap,
    UserOrdinal,
    sqlite_timestamp,
)
from analytics.periods import bucket_of
from analytics.rows import EventRow
from tests.helpers import aggregates, assert_exact, rebuilt

START = datetime(2025, 3, 1, tzinfo=UTC)
DAY0 = bucket_of(START) // 96


def per_day(totals: dict) -> dict:
    """Session totals per UTC day (index from START's day)."""
    days: dict = {}
    for bucket, (n, total) in totals.items():
        a, b = days.get(bucket // 96 - DAY0, (0, 0))
        days[bucket // 96 - DAY0] = (a + n, b + total)
    return days


def random_events(rng: random.Random, n: int, users: int = 6) -> list[dict]:
    names = ["play", "stop", "play", "stop", "pause", "skip"]
    return [
        {
            "event": rng.choice(names),
            "user_id": f"u{rng.randrange(users)}",
            "timestamp": (START + timedelta(seconds=rng.randrange(0, 5 * 86400, 7))).isoformat(),
        }
        for _ in range(n)
    ]


def test_single_events_in_random_order_keep_aggregates_exact(client, engine):
    rng = random.Random(7)
    for event in random_events(rng, 150):
        assert client.post("/track", json=event).status_code == 200
    counts, sessions, pairs, _ = assert_exact(engine)
    assert sum(counts.values()) == 150
    assert sessions and pairs  # the history does contain sessions


def at(seconds: int) -> str:
    return (START + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize("size", [1, 25])  # the few-rows insert and the bulk one
def test_a_run_of_events_landing_inside_a_session_splits_it(client, engine, size):
    # play 0 - stop 100 is one session; then, in one batch, a stop at 20 and a play at 50 land
    # between them (a run of two added events, with other users' events around them): the
    # session becomes 0-20 and 50-100.
    others = [{"event": "skip", "user_id": f"x{i}", "timestamp": at(i)} for i in range(size - 1)]
    assert (
        client.post(
            "/track/batch",
            json={
                "events": [
                    {"event": "play", "user_id": "u", "timestamp": at(0)},
                    {"event": "stop", "user_id": "u", "timestamp": at(100)},
                ]
            },
        ).status_code
        == 200
    )
    assert per_day(assert_exact(engine)[1]) == {0: (1, 100_000_000)}
    assert (
        client.post(
            "/track/batch",
            json={
                "events": others
                + [
                    {"event": "play", "user_id": "u", "timestamp": at(50)},
                    {"event": "stop", "user_id": "u", "timestamp": at(20)},
                ]
            },
        ).status_code
        == 200
    )
    assert per_day(assert_exact(engine)[1]) == {0: (2, 70_000_000)}
    # And a third event after the stop changes nothing; a play at 10 inside 0-20 breaks it.
    assert (
        client.post(
            "/track/batch",
            json={
                "events": others
                + [
                    {"event": "play", "user_id": "u", "timestamp": at(200)},
                    {"event": "play", "user_id": "u", "timestamp": at(10)},
                ]
            },
        ).status_code
        == 200
    )
    assert per_day(assert_exact(engine)[1]) == {0: (2, 60_000_000)}


def test_batches_and_duplicates_keep_aggregates_exact(client, engine):
    rng = random.Random(11)
    events = random_events(rng, 400)
    for i, event in enumerate(events):
        event["event_id"] = f"id-{i}"
    for chunk in range(0, 400, 100):
        batch = events[chunk : chunk + 100] + events[max(0, chunk - 30) : chunk]  # retries
        rng.shuffle(batch)
        response = client.post("/track/batch", json={"events": batch})
        assert response.status_code == 200
    counts, _, _, _ = assert_exact(engine)
    assert sum(counts.values()) == 400


def test_purge_keeps_aggregates_exact(app, client, engine):
    rng = random.Random(3)
    for event in random_events(rng, 200):
        assert client.post("/track", json=event).status_code == 200
    with Session(engine) as session:
        ids = list(session.scalars(select(Event.id)))
        old = rng.sample(ids, 80)
        session.execute(
            Event.__table__.update()
            .where(Event.id.in_(old))
            .values(received_at=datetime.now(UTC) - timedelta(days=90))
        )
        session.commit()
    result = app.test_cli_runner().invoke(args=["purge", "--batch-size", "17"])
    assert result.exit_code == 0, result.output
    counts, _, _, _ = assert_exact(engine)
    assert sum(counts.values()) == 120


def post_in_parallel(port: int, events: list[dict], clients: int) -> None:
    """POST /track each event once, from ``clients`` connections at a time."""
    import http.client

    def send(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for event in chunk:
            conn.request(
                "POST",
                "/track",
                body=json.dumps(event),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        conn.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, [events[i::clients] for i in range(clients)]))


@pytest.mark.live
def test_concurrent_writers_keep_aggregates_exact(live_server, engine):
    server = live_server(workers=4)
    rng = random.Random(5)
    events = random_events(rng, 600, users=4)  # few users: many collide on the same sequences

    post_in_parallel(server.port, events, 8)
    counts, _, _, _ = assert_exact(engine)
    assert sum(counts.values()) == 600


@pytest.mark.live
def test_deletes_beside_concurrent_writers_of_the_same_users_keep_aggregates_exact(
    live_server, engine
):
    """Some of users' events are deleted, and all of others', while the same users send more:
    no bit of a user without events in its piece stays set, no bit of one with events is
    lost, no ordinal of a user with events is dropped."""
    import threading

    server = live_server(workers=2)
    rng = random.Random(11)
    events = [
        {**e, "timestamp": (START + timedelta(seconds=rng.randrange(0, 86400, 7))).isoformat()}
        for e in random_events(rng, 400, users=3)
    ]
    done = threading.Event()
    deleted = []

    def erase():
        while not done.is_set():
            # Half of a day of u0's (its day and UTC-day pieces keep other events), all of u1's.
            deleted.append(
                writer.delete_events(
                    engine,
                    select(Event.id).where(
                        Event.user_id == "u0", Event.occurred_at < START + timedelta(hours=12)
                    ),
                )
            )
            deleted.append(
                writer.delete_events(engine, select(Event.id).where(Event.user_id == "u1"))
            )

    eraser = threading.Thread(target=erase)
    eraser.start()
    try:
        post_in_parallel(server.port, events, 4)
    finally:
        done.set()
        eraser.join()
    assert sum(deleted) > 0  # the deletes did run beside the writers
    counts = assert_exact(engine)[0]
    # Nothing of u2's was deleted: every one of its events is stored and counted.
    sent_u2 = Counter(e["event"] for e in events if e["user_id"] == "u2")
    with Session(engine) as session:
        stored_u2 = Counter(session.scalars(select(Event.event).where(Event.user_id == "u2")))
    assert stored_u2 == sent_u2 and sum(sent_u2.values()) > 0
    assert sum(counts.values()) == len(stored_ids(engine))


def test_a_fold_holds_back_other_folds_but_no_writer(backend, database_url, monkeypatch):
    """While one transaction folds the active users' log, a write that does not fold commits
    at once, and another fold (a read's) waits for the first to commit, then moves what is
    left: both users end up in the bitmaps, numbered once."""
    if backend != "postgresql":
        pytest.skip("SQLite serialises writers")
    import threading

    from analytics.aggregates import active_users
    from analytics.db import make_engine

    monkeypatch.setattr(active_users, "folds_log", lambda ids: False)
    engine = make_engine(database_url, lock_wait_ms=30000)
    dialect = dialects.of(engine)

    def rows(user: str) -> list[EventRow]:  # views: no session pairing, so no per-user lock
        return [
            EventRow(
                event="view",
                user_id=user,
                occurred_at=START,
                received_at=START,
                metadata_json="null",
            )
        ]

    def write(user: str) -> None:
        with engine.begin() as conn:
            writer._insert(conn, dialect, rows(user))

    try:
        write("x")
        with engine.connect() as first:
            first.begin()
            dialect.take_locks(first, active_users.fold_locks())
            assert dialect.fold_activity(first) == 1  # x's pair
            writing = threading.Thread(target=write, args=("y",))
            writing.start()
            writing.join(10)
            assert not writing.is_alive()  # committed beside the fold
            folding = threading.Thread(target=writer.fold_activity, args=(engine,))
            folding.start()
            folding.join(1)
            assert folding.is_alive()  # on the fold lock
            first.commit()
        folding.join(30)
        assert not folding.is_alive()
        _, _, _, active = assert_exact(engine)
        assert active[(96, bucket_of(START) - bucket_of(START) % 96)] == {"x", "y"}
    finally:
        engine.dispose()


def test_deletes_beside_writers_of_other_users_never_wait_in_a_cycle(
    backend, database_url, monkeypatch
):
    """Deleters and writers of different users share the active-user bitmap rows of the same
    pieces: each takes them in key order, so none waits for another in a cycle (which the
    database would break by aborting one, a retry counted here)."""
    if backend != "postgresql":
        pytest.skip("SQLite serialises writers")
    from analytics.db import make_engine

    retried = []
    monkeypatch.setattr(writer, "is_retryable", lambda exc: retried.append(exc) or True)
    engine = make_engine(database_url, lock_wait_ms=30000)

    def rows(user_id: str, seed: int) -> list[EventRow]:
        # Events spread over the quarter-hours of one day: many bitmap rows per batch.
        rng = random.Random(seed)
        return [
            EventRow(
                event="play",
                user_id=user_id,
                event_id=f"{seed}-{n}",
                occurred_at=START + timedelta(minutes=15 * rng.randrange(96)),
                received_at=START,
                metadata_json=None,
            )
            for n in range(40)
        ]

    def write(client: int) -> None:
        for round_no in range(12):
            with Session(engine) as session:
                writer.store_events(
                    session, rows(f"w{client}-{round_no % 3}", client * 100 + round_no)
                )

    def write_then_delete(client: int) -> None:
        for round_no in range(12):
            user_id = f"d{client}"
            with Session(engine) as session:
                writer.store_events(session, rows(user_id, 10_000 + client * 100 + round_no))
            assert (
                writer.delete_events(engine, select(Event.id).where(Event.user_id == user_id)) > 0
            )

    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(write, n) for n in range(3)] + [
                pool.submit(write_then_delete, n) for n in range(3)
            ]
            for future in futures:
                future.result()
        assert retried == []
        assert_exact(engine)
    finally:
        engine.dispose()


def test_rebuild_from_scratch_matches(client, engine):
    rng = random.Random(9)
    for event in random_events(rng, 100):
        assert client.post("/track", json=event).status_code == 200
    before = aggregates(engine)
    counts, sessions, pairs, active = before
    assert sum(counts.values()) == 100 and sessions and pairs and active  # something to rebuild
    with Session(engine) as session:
        for table in (EventHour, PlayStopSession, SessionBucket, UserBitmap, UserOrdinal):
            session.execute(delete(table))
        session.commit()
    assert aggregates(engine) == ({}, {}, set(), {})
    assert rebuilt(engine) == before


def test_rebuild_command_repairs_counts_changed_behind_the_api(app, client, engine):
    for at in ("2025-03-01T10:00:00Z", "2025-03-01T10:05:00Z"):
        client.post("/track", json={"event": "play", "user_id": "u", "timestamp": at})
    client.post(
        "/track", json={"event": "stop", "user_id": "u", "timestamp": "2025-03-01T10:06:00Z"}
    )
    with Session(engine) as session:  # an operator deletes a play with SQL
        session.execute(delete(Event).where(Event.occurred_at == START.replace(hour=10, minute=5)))
        session.commit()
    result = app.test_cli_runner().invoke(args=["rebuild-aggregates"])
    assert result.exit_code == 0, result.output
    assert "Rebuilt" in result.output
    query = "start_date=2025-03-01&end_date=2025-03-01"
    assert client.get(f"/metrics?{query}").get_json()["data"] == [
        {"date": "2025-03-01", "play": 1, "stop": 1}
    ]
    assert client.get(f"/sessions?{query}").get_json()["data"] == [
        {"date": "2025-03-01", "totalDuration": 360, "sessionCount": 1, "averageDuration": 360}
    ]


@pytest.mark.live
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
            event = {
                "event": ("play", "stop", "view")[i % 3],
                "user_id": f"bg{n}-{i % 5}",
                "timestamp": f"2025-03-0{1 + i % 3}T10:{i % 60:02d}:00Z",
            }
            conn.request(
                "POST",
                "/track",
                body=json.dumps(event),
                headers={"Content-Type": "application/json"},
            )
            conn.getresponse().read()
            i += 1
        conn.close()

    def call(conn, method, path, body=None):
        conn.request(
            method,
            path,
            body=json.dumps(body) if body else None,
            headers={"Content-Type": "application/json"},
        )
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
            call(
                conn,
                "POST",
                "/track",
                {"event": "checkpoint", "user_id": "reader", "timestamp": "2025-03-02T12:00:00Z"},
            )
            [metrics] = call(conn, "GET", f"/metrics?{day}")["data"]
            assert metrics["checkpoint"] == i
            # A session of a user nobody else writes for: its count can only be ours.
            call(
                conn,
                "POST",
                "/track",
                {"event": "play", "user_id": f"reader{i}", "timestamp": "2025-03-05T08:00:00Z"},
            )
            call(
                conn,
                "POST",
                "/track",
                {"event": "stop", "user_id": f"reader{i}", "timestamp": "2025-03-05T08:00:10Z"},
            )
            [sessions] = call(conn, "GET", "/sessions?start_date=2025-03-05&end_date=2025-03-05")[
                "data"
            ]
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
    times = [
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=5))),
        datetime(2025, 3, 1, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    with Session(engine) as session:
        session.add_all(
            Event(event="play", user_id="u", occurred_at=at, received_at=at) for at in times
        )
        session.commit()
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT occurred_at FROM events ORDER BY id")).scalars().all()
    assert [sqlite_timestamp(at) for at in times] == stored
    windows = json.loads(dialects.of(engine).spans_json([("u", at, at) for at in times]))
    assert [window[1] for window in windows] == stored


class RecordingAggregate:
    """An aggregate that only writes down what the write path tells it."""

    name = "recording"
    tables: tuple[str, ...] = ()

    def __init__(self):
        self.inserted: list[int] = []
        self.deleted: list[int] = []
        self.rebuilds = 0
        self.folds = 0
        self.calls: list[tuple[str, list[int]]] = []

    def locks(self, events, deleting):
        self.calls.append(("locks to delete" if deleting else "locks to insert", ids_of(events)))
        return [Lock(99, 7, exclusive=deleting)]

    def on_insert(self, conn, events):
        self.inserted.extend(e.id for e in events)
        self.calls.append(("insert", ids_of(events)))

    def on_delete(self, conn, events):
        self.deleted.extend(e.id for e in events)
        self.calls.append(("delete", ids_of(events)))

    def asked_for_locks_before_each_hook(self) -> bool:
        """Whether every hook came right after its locks were asked for, for those events."""
        asked, hooks = self.calls[::2], self.calls[1::2]
        return len(asked) == len(hooks) and all(
            locks == (f"locks to {hook}", events) for locks, (hook, events) in zip(asked, hooks)
        )

    def rebuild(self, conn):
        self.rebuilds += 1

    def fold_locks(self):
        self.calls.append(("locks to fold", []))
        return [Lock(99, 8, exclusive=True)]

    def fold(self, conn, before_bucket):
        self.folds += 1
        self.calls.append(("fold", []))


def ids_of(events) -> list[int]:
    return [e.id for e in events]


def stored_ids(engine) -> list[int]:
    with Session(engine) as session:
        return sorted(session.scalars(select(Event.id)))


def test_a_registered_aggregate_hears_of_every_write_path(
    app, client, engine, monkeypatch, tmp_path
):
    recorder = RecordingAggregate()
    monkeypatch.setattr(writer, "REGISTRY", (*registry_module.REGISTRY, recorder))
    event = {"event": "play", "user_id": "u", "timestamp": "2025-03-01T10:00:00Z"}
    assert client.post("/track", json=event).status_code == 200
    assert client.post("/track", json={**event, "event_id": "x"}).status_code == 200
    assert client.post("/track", json={**event, "event_id": "x"}).get_json()["duplicate"]
    assert client.post("/track/batch", json={"events": [event] * 30}).status_code == 200
    source = tmp_path / "e.ndjson"
    source.write_text("\n".join(json.dumps({**event, "user_id": f"i{n}"}) for n in range(5)))
    result = app.test_cli_runner().invoke(args=["import", str(source)])
    assert result.exit_code == 0, result.output
    ids = stored_ids(engine)
    assert len(ids) == 37
    assert sorted(recorder.inserted) == ids  # each stored event once, duplicates never

    with Session(engine) as session:  # expire a third of them, and delete three directly
        session.execute(
            Event.__table__.update()
            .where(Event.id.in_(ids[::3]))
            .values(received_at=START - timedelta(days=400))
        )
        session.commit()
    cutoff = retention.retention_cutoff(30, datetime.now(UTC))
    assert retention.purge_expired(engine, cutoff, batch_size=4, pace=0) == len(ids[::3])
    assert writer.delete_events(engine, select(Event.id).where(Event.id.in_(ids[1:4]))) == 2
    assert sorted(recorder.deleted) == sorted({*ids[::3], *ids[1:4]})
    assert recorder.asked_for_locks_before_each_hook()

    result = app.test_cli_runner().invoke(args=["purge"])
    assert result.exit_code == 0, result.output
    assert recorder.folds == 1
    assert recorder.asked_for_locks_before_each_hook()  # the fold's too
    result = app.test_cli_runner().invoke(args=["rebuild-aggregates"])
    assert result.exit_code == 0, result.output
    assert recorder.rebuilds == 1
    assert_exact(engine)


class _LockFree(RecordingAggregate):
    """Needs no lock for anything, as the event counts."""

    name = "lock free"

    def locks(self, events, deleting):
        super().locks(events, deleting)
        return []

    def fold_locks(self):
        super().fold_locks()
        return []


def test_aggregates_that_need_no_lock_write_before_any_lock_is_taken(engine, monkeypatch):
    # Locks are held to the commit and concurrent batches share users: what needs none must
    # not run under them. Writes, deletes and folds all take lock-free rows, then the locks,
    # then the rest.
    order: list[str] = []
    free, locked = _LockFree(), RecordingAggregate()
    for aggregate, name in ((free, "free"), (locked, "locked")):
        for hook in ("on_insert", "on_delete", "fold"):
            monkeypatch.setattr(aggregate, hook, _noting(order, f"{name} {hook}"))
    monkeypatch.setattr(writer, "REGISTRY", (locked, free))  # the locked one listed first
    dialect = dialects.of(engine)
    monkeypatch.setattr(
        dialect, "take_locks", lambda conn, locks: order.append(f"take {len(locks)} lock(s)")
    )
    with Session(engine) as session:
        writer.store_events(session, [EventRow("play", "u", START, START, "null")])
    assert order == ["free on_insert", "take 1 lock(s)", "locked on_insert"]

    order.clear()
    assert writer.delete_events(engine, select(Event.id)) == 1
    assert order == ["free on_delete", "take 1 lock(s)", "locked on_delete"]

    order.clear()
    writer.fold_aggregates(engine, bucket_of(START) + 1)
    assert order == ["free fold", "take 1 lock(s)", "locked fold"]


def _noting(order: list[str], name: str):
    def hook(*args):
        order.append(name)

    return hook


def test_the_sessions_table_holds_each_pairing(client, engine):
    # play, play, stop, stop: one session, from the second play to the first stop.
    for name, second in (("play", 0), ("play", 5), ("stop", 9), ("stop", 20)):
        client.post("/track", json={"event": name, "user_id": "u", "timestamp": at(second)})
    with Session(engine) as session:
        ids = {(e.event, e.occurred_at): e.id for e in session.scalars(select(Event))}
        rows = session.execute(
            select(PlayStopSession.play_id, PlayStopSession.stop_id, PlayStopSession.duration_us)
        ).all()
    assert rows == [
        (
            ids[("play", START + timedelta(seconds=5))],
            ids[("stop", START + timedelta(seconds=9))],
            4_000_000,
        )
    ]
    assert_exact(engine)


def test_an_event_between_a_play_and_its_stop_by_timestamp_tie(client, engine):
    # Equal timestamps are ordered by arrival: play@0, stop@10, then a play@10 arriving later
    # comes after the stop and starts nothing; a stop@0 arriving later comes after the play.
    for name, second in (("play", 0), ("stop", 10), ("play", 10), ("stop", 0)):
        client.post("/track", json={"event": name, "user_id": "u", "timestamp": at(second)})
    _, totals, pairs, _ = assert_exact(engine)
    assert [duration for _, _, duration in pairs] == [0]
    assert sum(n for n, _ in totals.values()) == 1


def test_counting_nothing_leaves_no_rows(engine):
    with Session(engine) as session:
        assert writer.store_events(session, []) == []
        assert session.scalar(select(func.count()).select_from(EventHour)) == 0


def test_folding_merges_the_shards_of_past_buckets_and_keeps_the_totals(
    engine, backend, monkeypatch
):
    # Two writer threads (shards 1 and 2) write the same buckets.
    import threading

    writer_thread = {"id": 1}
    monkeypatch.setattr(threading, "get_native_id", lambda: writer_thread["id"])
    for thread, user in ((1, "u"), (2, "v")):
        writer_thread["id"] = thread
        rows = [
            EventRow(name, user, START + timedelta(seconds=second), START, "null")
            for name, second in (("play", 0), ("stop", 30))
        ]
        with Session(engine) as session:
            assert writer.store_events(session, rows) == [True, True]
    before = aggregates(engine)
    with Session(engine) as session:
        shards = set(session.scalars(select(EventHour.shard)))
        # Folds set bits in shard 0 only; a PostgreSQL database from before the log may
        # hold others.
        assert set(session.scalars(select(UserBitmap.shard))) == {0}
        if backend == "postgresql":
            session.execute(
                text(
                    "INSERT INTO user_bitmaps (span, bucket, chunk, shard, bits) "
                    "SELECT span, bucket, chunk, 3, bits FROM user_bitmaps"
                )
            )
            session.commit()
    assert len(shards) == (2 if backend == "postgresql" else 1)
    writer.fold_aggregates(engine, bucket_of(START) + 1)  # the bucket of the events
    with Session(engine) as session:
        assert set(session.scalars(select(EventHour.shard))) == {0}
        assert set(session.scalars(select(SessionBucket.shard))) == {0}
        assert set(session.scalars(select(UserBitmap.shard))) == {0}
    assert aggregates(engine) == before == rebuilt(engine)
    writer.fold_aggregates(engine, bucket_of(START) + 1)  # again: nothing left to move
    assert aggregates(engine) == before


def test_a_fold_that_lost_a_race_is_run_again_whole(engine, monkeypatch):
    """A fold deletes rows of several shards while a writer or deleter adds to one in key
    order; when the database aborts it for waiting in a cycle, it is run again."""
    from sqlalchemy.exc import DBAPIError

    class LostARace(Exception):
        sqlstate = "40P01"

    class LosesTheFirstRace(RecordingAggregate):
        def fold(self, conn, before_bucket):
            super().fold(conn, before_bucket)
            if self.folds == 1:
                raise DBAPIError("DELETE", {}, LostARace())

    recorder = LosesTheFirstRace()
    monkeypatch.setattr(writer, "REGISTRY", (*registry_module.REGISTRY, recorder))
    with Session(engine) as session:
        writer.store_events(session, [EventRow("play", "u", START, START, "null")])
    writer.fold_aggregates(engine, bucket_of(START) + 1)
    assert recorder.folds == 2
    assert aggregates(engine) == rebuilt(engine)


def test_a_delete_that_lost_a_race_is_run_again_whole(client, engine, monkeypatch):
    """The database aborts a delete that waited in a cycle: it is run again from the start,
    and the aggregates lose the events once."""
    from sqlalchemy.exc import DBAPIError

    class LostARace(Exception):
        sqlstate = "40P01"

    class LosesTheFirstRace(RecordingAggregate):
        def on_delete(self, conn, events):
            super().on_delete(conn, events)
            if len(self.deleted) == len(events):
                raise DBAPIError("DELETE", {}, LostARace())

    recorder = LosesTheFirstRace()
    monkeypatch.setattr(writer, "REGISTRY", (*registry_module.REGISTRY, recorder))
    for n in range(3):
        client.post(
            "/track",
            json={
                "event": "play",
                "user_id": "u",
                "event_id": str(n),
                "timestamp": "2025-03-01T10:00:00Z",
            },
        )
    assert writer.delete_events(engine, select(Event.id).where(Event.event_id != "0")) == 2
    assert len(recorder.deleted) == 4  # heard twice: the aborted attempt and the one that held
    with Session(engine) as session:
        assert session.scalars(select(Event.event_id)).all() == ["0"]
    assert_exact(engine)
