"""DELETE /users/<user_id>: every event of the user goes, from /metrics, /sessions and
/active-users too, in paced batches; the answer counts them; the erasure is logged without the
user's data."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analytics import erasure, retention, writer
from analytics.models import Event
from analytics.rows import EventRow
from tests.helpers import assert_error, assert_exact, bearer, create_key, track_event

ODD_USER = 'a/b c?d#e%f "é" 漢'
METRICS = "/metrics?start_date=2025-01-01&end_date=2025-01-31"
SESSIONS = "/sessions?start_date=2025-01-01&end_date=2025-01-31"
ACTIVE_USERS = "/active-users?start_date=2025-01-01&end_date=2025-01-31"


def play_and_stop(client, user: str, day: int, event_id: str | None = None) -> None:
    track_event(
        client,
        event="play",
        user_id=user,
        timestamp=f"2025-01-{day:02d}T10:00:00Z",
        event_id=event_id,
    )
    track_event(client, event="stop", user_id=user, timestamp=f"2025-01-{day:02d}T10:01:00Z")


def count_of(engine, user: str) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Event).where(Event.user_id == user))


def test_every_event_of_the_user_goes_and_the_answers_follow(client, engine):
    play_and_stop(client, ODD_USER, 2, event_id="p1")
    play_and_stop(client, ODD_USER, 3)
    track_event(client, event="purchase", user_id=ODD_USER, timestamp="2025-01-03T11:00:00Z")
    play_and_stop(client, "keep", 3)
    play_and_stop(client, "a", 2)  # a prefix of the erased id, and ...
    play_and_stop(client, "a/b", 2)  # ... what the id would be if %2F were decoded early
    assert client.get(ACTIVE_USERS).get_json()["data"] == [
        {"date": "2025-01-02", "users": 3},
        {"date": "2025-01-03", "users": 2},
    ]

    response = client.delete(f"/users/{quote(ODD_USER, safe='')}")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "success", "deleted": 5}
    assert count_of(engine, ODD_USER) == 0
    assert client.get(METRICS).get_json()["data"] == [
        {"date": "2025-01-02", "play": 2, "stop": 2},
        {"date": "2025-01-03", "play": 1, "stop": 1},
    ]
    assert client.get(SESSIONS).get_json()["data"] == [
        {"date": "2025-01-02", "totalDuration": 120, "sessionCount": 2, "averageDuration": 60},
        {"date": "2025-01-03", "totalDuration": 60, "sessionCount": 1, "averageDuration": 60},
    ]
    assert client.get(ACTIVE_USERS).get_json()["data"] == [
        {"date": "2025-01-02", "users": 2},
        {"date": "2025-01-03", "users": 1},
    ]
    assert_exact(engine)  # the erased user's ordinal is gone too


def test_an_unknown_user_is_zero(client, engine):
    play_and_stop(client, "somebody", 2)
    response = client.delete("/users/nobody")
    assert response.status_code == 200
    assert response.get_json() == {"status": "success", "deleted": 0}
    assert count_of(engine, "somebody") == 2  # nobody else's events went


def test_event_ids_may_be_used_again_afterwards(client):
    event = {
        "event": "play",
        "user_id": "u",
        "timestamp": "2025-01-02T00:00:00Z",
        "event_id": "e-1",
    }
    track_event(client, **event)
    assert track_event(client, **event).get("duplicate") is True
    assert client.delete("/users/u").get_json()["deleted"] == 1

    assert "duplicate" not in track_event(client, **event)
    assert client.get(METRICS).get_json()["data"] == [{"date": "2025-01-02", "play": 1}]


def test_a_slash_in_a_path_is_not_part_of_an_id(client, engine):
    track_event(client, event="play", user_id="a/b", timestamp="2025-01-02T00:00:00Z")
    assert_error(client.delete("/users/a/b"), 404)
    assert_error(client.delete("/users/a/events"), 405)  # the GET of user "a"
    assert count_of(engine, "a/b") == 1
    assert client.delete("/users/a%2Fb").get_json()["deleted"] == 1
    assert count_of(engine, "a/b") == 0


def test_an_id_that_is_not_utf8_or_holds_nul_is_refused(client):
    for path, message in (
        ("/users/%FF", "user_id must be percent-encoded UTF-8"),
        ("/users/a%00b", "user_id must not contain NUL (U+0000) characters"),
    ):
        for response in (client.delete(path), client.get(path + "/events")):
            assert assert_error(response, 400, message) == {"status": "error", "message": message}


def test_erasure_goes_in_paced_batches_each_through_the_write_path(engine, monkeypatch):
    rows = [
        EventRow(
            "play" if n % 2 else "stop",
            "big",
            datetime(2025, 1, 2, tzinfo=UTC) + timedelta(seconds=n),
            datetime.now(UTC),
            "null",
        )
        for n in range(10)
    ]
    with Session(engine) as session:
        writer.store_events(session, rows)
    batches = []
    real_delete = writer.delete_events
    monkeypatch.setattr(
        writer, "delete_events", lambda *args: batches.append(real_delete(*args)) or batches[-1]
    )
    sleeps = []
    monkeypatch.setattr(retention, "sleep", sleeps.append)

    assert erasure.erase_user(engine, "big", batch_size=4) == 10

    assert batches == [4, 4, 2, 0]
    assert len(sleeps) == 3  # a rest after each batch that deleted something
    assert count_of(engine, "big") == 0
    assert_exact(engine)


def test_ingest_goes_on_during_an_erasure_and_the_aggregates_stay_exact(engine):
    start = datetime(2025, 1, 2, tzinfo=UTC)
    with Session(engine) as session:
        writer.store_events(
            session,
            [
                EventRow(
                    "play" if n % 3 else "stop", "big", start + timedelta(seconds=n), start, "null"
                )
                for n in range(600)
            ],
        )
    stop = threading.Event()
    stored = []

    def ingest():
        with Session(engine) as session:
            n = 0
            while not stop.is_set():
                n += 1
                stored.extend(
                    writer.store_events(
                        session,
                        [
                            EventRow(
                                "play" if n % 2 else "stop",
                                f"other{n % 3}",
                                start + timedelta(seconds=n),
                                datetime.now(UTC),
                                "null",
                            )
                        ],
                    )
                )

    thread = threading.Thread(target=ingest)
    thread.start()
    try:
        deleted = erasure.erase_user(engine, "big", batch_size=50, pace=0)
    finally:
        stop.set()
        thread.join()
    assert deleted == 600
    assert count_of(engine, "big") == 0
    assert stored and all(stored)
    assert_exact(engine)


def test_an_erasure_needs_admin_and_is_logged_with_the_key_but_not_the_user(make_app, caplog):
    app = make_app(AUTH_MODE="reads")
    client = app.test_client()
    reader = create_key(app, "reader", "read")
    admin = create_key(app, "dpo-key", "admin")
    track_event(
        client,
        event="play",
        user_id="secret-user",
        timestamp="2025-01-02T00:00:00Z",
        metadata={"email": "x@example.com"},
    )

    assert_error(client.delete("/users/secret-user"), 401, "API key required")
    refused = client.delete("/users/secret-user", headers=bearer(reader))
    assert_error(refused, 403, "This API key does not allow admin")
    assert not [r for r in caplog.records if "erasure" in r.getMessage()]

    with caplog.at_level(logging.INFO):
        response = client.delete("/users/secret-user", headers=bearer(admin))
    assert response.get_json() == {"status": "success", "deleted": 1}
    [record] = [r for r in caplog.records if "erasure" in r.getMessage()]
    text = record.getMessage()
    assert "dpo-key" in text and " 1 events" in text
    assert datetime.now(UTC).strftime("%Y-%m-%dT%H") in text
    assert "secret-user" not in text and "example.com" not in text
