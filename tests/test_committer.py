"""Group commit of POST /track (analytics/committer.py), on both backends: requests that wait
at the same time share one transaction, each still gets its own answer after the commit, and
an event the database refuses fails only its own request."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.exc import ProgrammingError

import analytics.committer as committer
from tests.helpers import DUPLICATE, SUCCESS, post, stored


class HeldWriter:
    """Stands in for committer.store_events: records each group's user_ids, holds the first
    group until ``queued`` more events wait behind it (so that they form the next group), and
    refuses any group holding the user ``refuse``."""

    def __init__(self, app, queued: int, refuse: str | None = None):
        self.writer = app.extensions[committer.EXTENSION_KEY]
        self.real = committer.store_events
        self.queued, self.refuse = queued, refuse
        self.groups: list[list[str]] = []
        self.first_entered = threading.Event()

    def __call__(self, session, rows):
        self.groups.append([row.user_id for row in rows])
        if len(self.groups) == 1:
            self.first_entered.set()
            deadline = time.monotonic() + 10
            while self.writer._queue.qsize() < self.queued and time.monotonic() < deadline:
                time.sleep(0.005)
        if self.refuse in self.groups[-1]:
            raise ProgrammingError("INSERT INTO events ...", {}, Exception("value refused"))
        return self.real(session, rows)


def post_concurrently(app, held: HeldWriter, first: dict, others: list[dict]) -> list:
    """POST ``first``, and once the writer holds it, every one of ``others`` at once."""
    answers: list = [None] * (1 + len(others))

    def send(index, body):
        answers[index] = post(app.test_client(), body)

    threads = [threading.Thread(target=send, args=(0, first))]
    threads[0].start()
    assert held.first_entered.wait(10)
    for index, body in enumerate(others, start=1):
        threads.append(threading.Thread(target=send, args=(index, body)))
        threads[-1].start()
    for thread in threads:
        thread.join(30)
    return answers


def event(user_id: str, **fields) -> dict:
    return {"event": "play", "user_id": user_id, "timestamp": "2025-01-18T14:30:00Z", **fields}


def test_requests_waiting_together_share_one_transaction(app, engine, monkeypatch):
    held = HeldWriter(app, queued=6)
    monkeypatch.setattr(committer, "store_events", held)
    answers = post_concurrently(app, held, event("u0"), [event(f"u{n}") for n in range(1, 7)])
    assert [answer.status_code for answer in answers] == [200] * 7
    assert all(answer.get_json() == SUCCESS for answer in answers)
    assert held.groups[0] == ["u0"]
    assert sorted(held.groups[1]) == [f"u{n}" for n in range(1, 7)]
    assert len(held.groups) == 2
    assert sorted(row.user_id for row in stored(engine)) == [f"u{n}" for n in range(7)]


def test_a_duplicate_inside_a_group_is_reported_to_its_own_request(app, engine, monkeypatch):
    held = HeldWriter(app, queued=2)
    monkeypatch.setattr(committer, "store_events", held)
    answers = post_concurrently(
        app, held, event("u0"), [event("u1", event_id="e"), event("u1", event_id="e")]
    )
    assert sorted(str(answer.get_json()) for answer in answers[1:]) == sorted(
        [str(SUCCESS), str(DUPLICATE)]
    )
    assert len(held.groups[1]) == 2
    assert sorted(row.user_id for row in stored(engine)) == ["u0", "u1"]


def test_an_event_the_database_refuses_fails_only_its_own_request(app, engine, monkeypatch):
    held = HeldWriter(app, queued=3, refuse="bad")
    monkeypatch.setattr(committer, "store_events", held)
    answers = post_concurrently(app, held, event("u0"), [event("u1"), event("bad"), event("u2")])
    by_user = dict(zip(["u0", "u1", "bad", "u2"], answers))
    assert by_user["bad"].status_code == 500
    assert by_user["bad"].get_json() == {"status": "error", "message": "Failed to log event"}
    for user in ("u0", "u1", "u2"):
        assert by_user[user].status_code == 200, user
    # The shared group failed as a whole, then each of its events was written alone.
    assert sorted(held.groups[1]) == ["bad", "u1", "u2"]
    assert sorted(map(tuple, held.groups[2:])) == [("bad",), ("u1",), ("u2",)]
    assert sorted(row.user_id for row in stored(engine)) == ["u0", "u1", "u2"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_each_worker_process_starts_its_own_writer(app, client, engine, monkeypatch):
    """A forked worker inherits the parent's committer but not its thread: the first event in
    the new process starts one there."""
    assert post(client, event("u0")).status_code == 200
    writer = app.extensions[committer.EXTENSION_KEY]
    monkeypatch.setattr(writer, "_pid", -1)  # as seen from a child process after fork
    before = {thread.ident for thread in threading.enumerate() if thread.name == "track-writer"}
    assert post(client, event("u1")).status_code == 200
    after = {thread.ident for thread in threading.enumerate() if thread.name == "track-writer"}
    assert len(after - before) == 1
    assert [row.user_id for row in stored(engine)] == ["u0", "u1"]  # written by the new one


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_writers_wait_their_turn_on_the_lock_file(app, database_url, engine):
    """Every writer takes the lock beside the database before it begins: while another
    process holds it, POST /track waits (it neither fails nor writes), and goes on after."""
    import fcntl

    from sqlalchemy.engine import make_url

    answers = []
    with open(f"{make_url(database_url).database}-writer.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sender = threading.Thread(
            target=lambda: answers.append(post(app.test_client(), event("u0")))
        )
        sender.start()
        sender.join(0.5)
        assert sender.is_alive() and not answers
        assert stored(engine) == []
        fcntl.flock(lock, fcntl.LOCK_UN)
    sender.join(30)
    assert [answer.status_code for answer in answers] == [200]
    assert [row.user_id for row in stored(engine)] == ["u0"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_writer_that_stopped_is_started_again(app, client, engine):
    assert post(client, event("u0")).status_code == 200
    writer = app.extensions[committer.EXTENSION_KEY]
    stopped = threading.Thread(target=lambda: None)
    stopped.start()
    stopped.join()
    writer._thread = stopped  # as if the writer thread had died
    assert post(client, event("u1")).status_code == 200
    assert writer._thread is not stopped and writer._thread.is_alive()
    assert [row.user_id for row in stored(engine)] == ["u0", "u1"]


def test_a_writer_that_stops_without_a_result_is_never_a_success(app, engine, monkeypatch):
    def stops(session, rows):
        raise SystemExit  # what an Exception handler does not catch

    monkeypatch.setattr(committer, "store_events", stops)
    response = post(app.test_client(), event("u0"))
    assert response.status_code == 503
    assert response.get_json() == {"status": "error", "message": "Failed to log event"}
    assert response.headers["Retry-After"]
    monkeypatch.undo()  # and the writer goes on
    assert post(app.test_client(), event("u1")).get_json() == SUCCESS
    assert [row.user_id for row in stored(engine)] == ["u1"]


def test_a_request_waits_for_its_commit_only_so_long(make_app, engine, monkeypatch):
    app = make_app(TRACK_WAIT_SECONDS=1)
    release = threading.Event()
    real = committer.store_events

    def slow(session, rows):
        release.wait(10)
        return real(session, rows)

    monkeypatch.setattr(committer, "store_events", slow)
    try:
        response = post(app.test_client(), event("u0"))
        assert response.status_code == 503
        assert response.get_json() == {"status": "error", "message": "Failed to log event"}
    finally:
        release.set()
        # The held group still goes in: a 503 says the outcome is unknown, not that it failed
        # (a retry with the same event_id is safe).
        deadline = time.monotonic() + 10
        while not stored(engine) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [row.user_id for row in stored(engine)] == ["u0"]


def test_close_stops_the_writer_after_what_waits_and_a_new_event_starts_another(app, engine):
    """What the fixtures do after each test: the writer stores what it was handed, then ends;
    the committer starts a writer again when it is next needed."""
    writer = app.extensions[committer.EXTENSION_KEY]
    assert post(app.test_client(), event("u0")).get_json() == SUCCESS
    first = writer._thread
    writer.close()
    assert not first.is_alive()
    assert post(app.test_client(), event("u1")).get_json() == SUCCESS
    assert writer._thread is not first and writer._thread.is_alive()
    assert [row.user_id for row in stored(engine)] == ["u0", "u1"]
