"""Idempotency: an event_id makes POST /track safe to retry, on both backends."""

from __future__ import annotations

import concurrent.futures
import json
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from tests.helpers import (
    DUPLICATE,
    FUTURE_WARNING,
    SUCCESS,
    alembic_config,
    assert_error,
    migrate,
    post,
    stored,
)


def play(**fields) -> dict:
    return {"event": "play", "user_id": "u", "timestamp": "2025-01-18T14:30:00Z", **fields}


def test_an_event_id_is_stored_with_the_event(client, engine):
    assert post(client, play(event_id="3f2b8c1e-6d0a-4f5e-9b7a-2c4d6e8f0a1b")).get_json() == SUCCESS
    [row] = stored(engine)
    assert row.event_id == "3f2b8c1e-6d0a-4f5e-9b7a-2c4d6e8f0a1b"


def test_a_retry_is_a_duplicate_and_stores_nothing(client, engine):
    assert post(client, play(event_id="e1")).get_json() == SUCCESS
    again = post(client, play(event_id="e1"))
    assert again.status_code == 200
    assert again.get_json() == DUPLICATE
    assert post(client, play(event_id="e1")).get_json() == DUPLICATE
    assert len(stored(engine)) == 1


def test_the_first_event_wins_and_a_duplicate_reports_no_warnings(client, engine):
    first = post(client, play(event_id="e1", timestamp="2999-01-01T00:00:00Z"))
    assert first.get_json() == {**SUCCESS, "warnings": [FUTURE_WARNING]}
    again = post(
        client,
        {
            "event": "stop",
            "user_id": "u",
            "event_id": "e1",
            "timestamp": "2999-01-01T00:00:00Z",
            "metadata": {"other": 1},
        },
    )
    assert again.get_json() == DUPLICATE
    [row] = stored(engine)
    assert row.event == "play"
    assert row.meta == {
        "timestamp_warning": FUTURE_WARNING,
        "original_timestamp": "2999-01-01T00:00:00Z",
    }


def test_event_ids_are_scoped_by_user_and_exact(client, engine):
    for user_id, event_id in [("a", "x"), ("b", "x"), ("a", "X"), ("a", "x "), ("A", "x")]:
        assert post(client, play(user_id=user_id, event_id=event_id)).get_json() == SUCCESS
    assert post(client, play(user_id="b", event_id="x")).get_json() == DUPLICATE
    assert len(stored(engine)) == 5


@pytest.mark.parametrize("absent", [{}, {"event_id": None}])
def test_events_without_event_id_are_never_deduplicated(client, engine, absent):
    for _ in range(3):
        assert post(client, play(**absent)).get_json() == SUCCESS
    rows = stored(engine)
    assert len(rows) == 3
    assert {row.event_id for row in rows} == {None}


@pytest.mark.parametrize("event_id", ["a", "x" * 128, "é" * 128, "  ", "a/b:c#d?e", "0"])
def test_event_ids_of_1_to_128_characters_are_accepted(client, engine, event_id):
    assert post(client, play(event_id=event_id)).get_json() == SUCCESS
    assert stored(engine)[0].event_id == event_id
    assert post(client, play(event_id=event_id)).get_json() == DUPLICATE
    assert len(stored(engine)) == 1


@pytest.mark.parametrize(
    "event_id", ["", "x" * 129, "é" * 129, 5, 1.5, True, ["a"], {"a": 1}, "a\u0000b"]
)
def test_other_event_ids_are_refused(client, engine, event_id):
    assert_error(post(client, play(event_id=event_id)), 400, field="event_id")
    assert stored(engine) == []


def test_a_duplicate_across_track_and_batch(client, engine):
    response = client.post("/track/batch", json={"events": [play(event_id="b1")]})
    assert response.get_json()["accepted"] == 1
    assert post(client, play(event_id="b1")).get_json() == DUPLICATE
    response = client.post("/track/batch", json={"events": [play(event_id="b1")]})
    assert response.get_json()["duplicates"] == 1
    assert len(stored(engine)) == 1


def test_once_purged_an_event_id_can_be_used_again(client, engine):
    assert post(client, play(event_id="e1")).get_json() == SUCCESS
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM events"))
    assert post(client, play(event_id="e1")).get_json() == SUCCESS
    assert len(stored(engine)) == 1


def test_the_database_itself_refuses_a_second_copy(engine):
    # Deduplication does not rest on a check made before writing: the table cannot hold two.
    insert = text(
        "INSERT INTO events (event, user_id, occurred_at, received_at, event_id) "
        "VALUES ('play', 'u', :at, :at, 'same')"
    )
    at = datetime(2025, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(insert, {"at": at})
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(insert, {"at": at})


def test_concurrent_retries_of_one_event_store_it_once(app, engine):
    # Several requests at once, each on its own connection (the test client is thread-safe).
    def send(_):
        with app.test_client() as client:
            return post(client, play(event_id="race")).get_json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    assert answers.count(SUCCESS) == 1
    assert answers.count(DUPLICATE) == 15
    assert len(stored(engine)) == 1


def test_the_openapi_document_describes_event_id(client):
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["TrackEvent"]
    assert schema["properties"]["event_id"]["maxLength"] == 128
    assert schema["properties"]["event_id"]["minLength"] == 1


def test_adding_event_id_keeps_stored_events_and_indexes(scratch_database):
    migrate(scratch_database, "0001")
    engine = create_engine(scratch_database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO events (event, user_id, occurred_at, received_at, metadata) "
                    "VALUES ('play', 'u', '2025-01-18 14:30:00', '2025-01-18 14:30:00', :meta)"
                ),
                {"meta": json.dumps({"k": "v"})},
            )
            indexes_before = {index["name"] for index in inspect(conn).get_indexes("events")}
        migrate(scratch_database, "0002")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT event, user_id, event_id FROM events")).all()
            inspector = inspect(conn)
            indexes_after = {index["name"] for index in inspector.get_indexes("events")}
            uniques = inspector.get_unique_constraints("events")
        assert rows == [("play", "u", None)]
        assert indexes_before <= indexes_after
        assert [(u["name"], u["column_names"]) for u in uniques] == [
            ("uq_events_user_id_event_id", ["user_id", "event_id"])
        ]
    finally:
        engine.dispose()


def test_id_blocks_migrate_up_and_down(scratch_database, backend):
    """0005 makes PostgreSQL's id sequence step by 1000 and its downgrade back by 1; events
    stored before it keep their ids and later ones come after them."""
    if backend != "postgresql":
        pytest.skip("SQLite numbers rows itself")
    step = text(
        "SELECT seqincrement FROM pg_sequence "
        "WHERE seqrelid = CAST(pg_get_serial_sequence('events', 'id') AS regclass)"
    )
    migrate(scratch_database, "0004")
    engine = create_engine(scratch_database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO events (event, user_id, occurred_at, received_at) "
                    "VALUES ('play', 'u', now(), now()), ('stop', 'u', now(), now())"
                )
            )
            assert conn.execute(step).scalar() == 1
        migrate(scratch_database, "0005")
        with engine.begin() as conn:
            assert conn.execute(step).scalar() == 1000
            conn.execute(
                text(
                    "INSERT INTO events (event, user_id, occurred_at, received_at) "
                    "VALUES ('play', 'u', now(), now())"
                )
            )
            # The next value starts a block of its own, after every id handed out before.
            assert conn.execute(text("SELECT id FROM events ORDER BY id")).scalars().all() == [
                1,
                2,
                1002,
            ]
        command.downgrade(alembic_config(scratch_database), "0004")
        with engine.connect() as conn:
            assert conn.execute(step).scalar() == 1
    finally:
        engine.dispose()
