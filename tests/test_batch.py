"""POST /track/batch: every rule of the contract, on both backends, and many clients at once."""

from __future__ import annotations

import concurrent.futures
import gzip
import http.client
import json
import multiprocessing
import random
import threading
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from analytics.models import Event
from tests.helpers import (
    FUTURE_WARNING,
    ROOT,
    TOO_DEEP,
    TRUNCATED_WARNING,
    assert_error,
    metadata_of_size,
    nested,
    stored,
    unreachable_url,
)

NDJSON = "application/x-ndjson"


def batch(
    client, events=None, *, body=None, content_type="application/json", gzipped=False, headers=None
):
    """POST /track/batch with {"events": events}, or with ``body`` as given."""
    if body is None:
        body = json.dumps({"events": events})
    data = body.encode() if isinstance(body, str) else body
    headers = dict(headers or {})
    if gzipped:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post("/track/batch", data=data, headers=headers)


def ndjson(*lines) -> str:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)


def success(accepted=0, duplicates=0, rejected=(), warnings=()) -> dict:
    return {
        "status": "success",
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": [{"index": i, "message": m} for i, m in rejected],
        "warnings": [{"index": i, "warnings": w} for i, w in warnings],
    }


def ev(n: int, **fields) -> dict:
    return {"event": "play", "user_id": "u", "timestamp": f"2025-01-18T14:30:{n:02d}Z", **fields}


# --- storing -----------------------------------------------------------------------------------


def test_valid_events_are_all_stored_in_order(client, engine):
    events = [ev(i, user_id=f"user{i % 3}", metadata={"n": i}) for i in range(25)]
    response = batch(client, events)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == success(accepted=25)
    rows = stored(engine)
    # Arrival order (ids) is batch order: it breaks ties between equal timestamps.
    assert [row.meta["n"] for row in rows] == list(range(25))
    assert [row.user_id for row in rows] == [f"user{i % 3}" for i in range(25)]
    assert rows[7].occurred_at == datetime(2025, 1, 18, 14, 30, 7, tzinfo=UTC)
    assert len({row.received_at for row in rows}) == 1


def test_a_batch_mixing_valid_invalid_and_duplicate_events(client, engine):
    assert batch(client, [ev(0, event_id="seen-before")]).status_code == 200
    events = [
        ev(1, event_id="a"),  # 0 stored
        {"event": "play"},  # 1 no user_id
        ev(2, event_id="seen-before"),  # 2 duplicate of a stored event
        "play",  # 3 not an object
        ev(3, event_id="a", metadata={"second": True}),  # 4 duplicate inside the batch
        ev(4, timestamp="2025-13-01T00:00:00Z"),  # 5 invalid timestamp
        ev(5, timestamp="2999-01-01T00:00:00Z"),  # 6 stored, with a warning
        ev(6, event="date"),  # 7 reserved name
        ev(7, event_id="b"),  # 8 stored
        None,  # 9 not an object
        ev(8),  # 10 stored (no event_id)
    ]
    response = batch(client, events)
    assert response.status_code == 200
    body = response.get_json()
    assert body["accepted"] == 4
    assert body["duplicates"] == 2
    assert [r["index"] for r in body["rejected"]] == [1, 3, 5, 7, 9]
    messages = {r["index"]: r["message"] for r in body["rejected"]}
    assert "user_id" in messages[1]
    assert messages[3] == messages[9] == "Event must be a JSON object"
    assert "timestamp" in messages[5]
    assert "event" in messages[7] and "reserved" in messages[7]
    assert body["warnings"] == [{"index": 6, "warnings": [FUTURE_WARNING]}]
    # Every event is in exactly one of accepted, duplicates or rejected.
    assert body["accepted"] + body["duplicates"] + len(body["rejected"]) == len(events)

    rows = stored(engine)
    assert [row.event_id for row in rows] == ["seen-before", "a", None, "b", None]
    assert [rows[i].occurred_at.second for i in (0, 1, 3, 4)] == [0, 1, 7, 8]
    assert rows[1].meta is None  # the first "a" won, not the later one with metadata
    assert rows[2].meta["timestamp_warning"] == FUTURE_WARNING


def test_duplicates_are_found_in_large_batches_too(client, engine):
    # Large batches take the bulk path (COPY on PostgreSQL, executemany on SQLite).
    assert batch(client, [ev(i % 60, event_id=f"old{i}") for i in range(30)]).status_code == 200
    events = (
        [ev(0, event_id=f"old{i}") for i in range(29, 0, -3)]  # 10 stored before
        + [ev(1, event_id=f"new{i}") for i in range(40)]  # 40 new
        + [ev(2, event_id=f"new{i}", event="repeat") for i in range(5)]  # 5 repeats
        + [ev(3) for _ in range(7)]
    )  # 7 never deduped
    response = batch(client, events)
    assert response.get_json() == success(accepted=47, duplicates=15)
    rows = stored(engine)[30:]
    assert [row.event_id for row in rows] == [f"new{i}" for i in range(40)] + [None] * 7
    assert {row.event for row in rows} == {"play"}  # the first of each repeated pair won


def test_storage_rules_are_those_of_track(client, engine):
    big = metadata_of_size(4097)
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = batch(
        client,
        [
            {"event": "a", "user_id": "u", "metadata": big},
            {"event": "b", "user_id": "u", "timestamp": future, "metadata": {"k": "v"}},
            {"event": "c", "user_id": "u", "timestamp": "2025-01-18T16:30:00.123+02:00"},
            {"event": "d", "user_id": "u", "timestamp": None, "metadata": None, "extra": [1]},
        ],
    )
    assert response.get_json() == success(
        accepted=4, warnings=[(0, [TRUNCATED_WARNING]), (1, [FUTURE_WARNING])]
    )
    a, b, c, d = stored(engine)
    assert a.meta == {"warning": TRUNCATED_WARNING, "originalSize": 4097}
    assert b.meta == {"k": "v", "timestamp_warning": FUTURE_WARNING, "original_timestamp": future}
    assert b.occurred_at <= datetime.now(UTC)
    assert c.occurred_at == datetime(2025, 1, 18, 14, 30, 0, 123000, tzinfo=UTC)
    assert d.meta is None
    assert abs(d.occurred_at - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize(
    "item, field",
    [
        ({"user_id": "u"}, "event"),
        ({"event": "", "user_id": "u"}, "event"),
        ({"event": "x" * 256, "user_id": "u"}, "event"),
        ({"event": "play", "user_id": "   "}, "user_id"),
        ({"event": "play", "user_id": 7}, "user_id"),
        ({"event": "play", "user_id": "u", "timestamp": "2025-01-18"}, "timestamp"),
        ({"event": "play", "user_id": "u", "timestamp": 1737210600}, "timestamp"),
        ({"event": "play", "user_id": "u", "metadata": [1]}, "metadata"),
        ({"event": "play", "user_id": "u", "metadata": {"k": "\u0000"}}, "metadata"),
        ({"event": "pl\u0000ay", "user_id": "u"}, "event"),
        ({"event": "play", "user_id": "u", "event_id": ""}, "event_id"),
        ({"event": "play", "user_id": "u", "event_id": "x" * 129}, "event_id"),
        ({"event": "play", "user_id": "u", "event_id": 12}, "event_id"),
    ],
)
def test_each_track_rule_rejects_the_item_not_the_batch(client, engine, item, field):
    response = batch(client, [ev(1), item, ev(2)])
    assert response.status_code == 200
    body = response.get_json()
    assert body["accepted"] == 2
    [rejected] = body["rejected"]
    assert rejected["index"] == 1
    assert field in rejected["message"]
    assert [row.occurred_at.second for row in stored(engine)] == [1, 2]


def test_duplicates_against_stored_events_report_no_warnings(client, engine):
    event = ev(1, event_id="e1", timestamp="2999-01-01T00:00:00Z")
    first = batch(client, [event]).get_json()
    assert first == success(accepted=1, warnings=[(0, [FUTURE_WARNING])])
    again = batch(client, [event, ev(2, event_id="e2")]).get_json()
    assert again == success(accepted=1, duplicates=1)
    assert [row.event_id for row in stored(engine)] == ["e1", "e2"]


@pytest.mark.parametrize("size", [10, 50])  # below and above the bulk path's threshold
def test_a_whole_batch_retried_stores_nothing_new(client, engine, size):
    events = [ev(i % 60, event_id=f"id-{i}") for i in range(size)]
    assert batch(client, events).get_json() == success(accepted=size)
    assert batch(client, events).get_json() == success(duplicates=size)
    assert len(stored(engine)) == size
    # The daily counts did not take the retried events in either.
    metrics = client.get("/metrics?start_date=2025-01-18&end_date=2025-01-18").get_json()
    assert metrics["data"] == [{"date": "2025-01-18", "play": size}]


def test_postgresql_numbers_a_bulk_batch_from_one_block_of_ids(client, engine, backend):
    if backend != "postgresql":
        pytest.skip("SQLite numbers rows itself")
    assert client.post("/track", json=ev(0)).status_code == 200
    assert batch(client, [ev(i % 60, event_id=f"b{i}") for i in range(1000)]).status_code == 200
    assert client.post("/track", json=ev(1)).status_code == 200
    ids = [row.id for row in stored(engine)]
    assert ids == sorted(ids)  # arrival order
    single, bulk, after = ids[0], ids[1:-1], ids[-1]
    assert bulk == list(range(bulk[0], bulk[0] + 1000))  # one block, numbered in batch order
    assert bulk[0] > single and after > bulk[-1]
    # A database whose sequence still steps by 1 (before migration 0005) works the same way,
    # one nextval() an event.
    with engine.begin() as conn:
        conn.execute(
            text(
                "DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s INCREMENT BY 1', "
                "pg_get_serial_sequence('events', 'id')); END $$"
            )
        )
    try:
        assert batch(
            client, [ev(i % 60, event_id=f"c{i}") for i in range(30)]
        ).get_json() == success(accepted=30)
        assert batch(
            client, [ev(i % 60, event_id=f"c{i}") for i in range(40)]
        ).get_json() == success(accepted=10, duplicates=30)
    finally:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s INCREMENT BY 1000', "
                    "pg_get_serial_sequence('events', 'id')); END $$"
                )
            )
    later = [row.id for row in stored(engine)][len(ids) :]
    assert len(later) == len(set(later)) == 40 and later == sorted(later)


def test_every_way_in_stores_the_same_text(client, engine):
    # A single event, a small batch and a bulk batch (three different inserts) store times and
    # metadata exactly as the ORM writes them: the same column text on SQLite, the same values
    # on PostgreSQL.
    metadata = {"song": "Ünïcode ✓", "n": [1, 2.5, None], "nested": {"a": True}}
    when = "2025-01-18T14:30:00.250000+01:00"
    item = {"event": "play", "user_id": "u", "timestamp": when, "metadata": metadata}
    with Session(engine) as session:
        session.add(
            Event(
                event="play",
                user_id="u",
                meta=metadata,
                event_id="orm",
                occurred_at=datetime(2025, 1, 18, 13, 30, 0, 250000, UTC),
                received_at=datetime(2025, 1, 18, 13, 30, 0, 250000, UTC),
            )
        )
        session.commit()
    assert client.post("/track", json={**item, "event_id": "one"}).status_code == 200
    assert batch(client, [{**item, "event_id": "small"}]).status_code == 200
    assert batch(client, [{**item, "event_id": f"bulk{i}"} for i in range(30)]).status_code == 200
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id, occurred_at, metadata FROM events ORDER BY id")
        ).all()
    assert [row[0] for row in rows[:3]] == ["orm", "one", "small"]
    orm_time, orm_metadata = rows[0][1], rows[0][2]
    for event_id, occurred_at, stored_metadata in rows[1:]:
        assert occurred_at == orm_time, event_id
        loaded = (
            json.loads(stored_metadata) if isinstance(stored_metadata, str) else stored_metadata
        )
        assert loaded == metadata, event_id
    if engine.dialect.name == "sqlite":
        assert orm_time == "2025-01-18 13:30:00.250000"
        # The compact encoding, non-ASCII kept: the text whose size the limit measured.
        assert {row[2] for row in rows[1:]} == {
            json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
        }
        assert json.loads(orm_metadata) == metadata


def test_event_ids_are_scoped_by_user(client, engine):
    response = batch(
        client,
        [
            ev(1, user_id="a", event_id="x"),
            ev(2, user_id="b", event_id="x"),
            ev(3, user_id="a", event_id="X"),
        ],
    )
    assert response.get_json() == success(accepted=3)
    assert [(row.user_id, row.event_id) for row in stored(engine)] == [
        ("a", "x"),
        ("b", "x"),
        ("a", "X"),
    ]


def test_events_without_event_id_are_never_deduplicated(client, engine):
    events = [ev(1), ev(1), ev(1, event_id=None), ev(1, event_id=None)]
    assert batch(client, events).get_json() == success(accepted=4)
    assert batch(client, events).get_json() == success(accepted=4)
    assert len(stored(engine)) == 8


# --- bodies that are not a batch -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "[]",
        '[{"event": "play", "user_id": "u"}]',
        '"events"',
        "42",
        "null",
        "{}",
        '{"event": "play", "user_id": "u"}',
        '{"events": {"event": "play", "user_id": "u"}}',
        '{"events": "play"}',
        '{"events": null}',
        '{"Events": []}',
    ],
)
def test_a_body_that_is_not_a_batch_is_400(client, engine, body):
    assert_error(
        batch(client, body=body),
        400,
        message='Request body must be a JSON object with an "events" list',
    )
    assert stored(engine) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"events": [}',
        b'{"events": [NaN]}',
        b"\xff{}",
        b'{"events": []} {"events": []}',
    ],
)
def test_malformed_json_is_400(client, engine, body):
    assert_error(batch(client, body=body), 400, message="Malformed JSON in request body")
    assert stored(engine) == []


def test_unpaired_surrogates_are_refused_not_a_server_error(client, engine):
    # "\ud800" alone is JSON syntax for a string no database can store.
    lone = '{"event": "pl\\ud800ay", "user_id": "u"}'
    paired = '{"event": "\\ud83c\\udfb5", "user_id": "u"}'  # one character, a note
    assert_error(
        batch(client, body=f'{{"events": [{paired}, {lone}]}}'),
        400,
        message="Malformed JSON in request body",
    )
    assert_error(
        client.post("/track", data=lone, content_type="application/json"),
        400,
        message="Malformed JSON in request body",
    )
    response = batch(client, body=ndjson(paired, lone), content_type=NDJSON)
    assert response.get_json() == success(accepted=1, rejected=[(1, "Malformed JSON")])
    assert [row.event for row in stored(engine)] == ["\U0001f3b5"]


def test_an_empty_batch_is_400(client, engine):
    assert_error(batch(client, []), 400, message="The batch has no events")
    assert_error(
        batch(client, body="\n \r\n\n", content_type=NDJSON), 400, message="The batch has no events"
    )
    assert_error(
        batch(client, body="", content_type=NDJSON), 400, message="The batch has no events"
    )


def test_a_batch_where_every_event_is_rejected_is_400_and_stores_nothing(client, engine):
    body = assert_error(batch(client, [{"event": "play"}, 5, ev(1, timestamp="soon")]), 400)
    assert body["message"] == "Every event in the batch was rejected; nothing was stored"
    assert set(body["errors"]) == {"events[0]", "events[1]", "events[2]"}
    assert "user_id" in body["errors"]["events[0]"][0]
    assert "timestamp" in body["errors"]["events[2]"][0]
    assert stored(engine) == []


def test_unknown_top_level_fields_are_ignored(client, engine):
    body = json.dumps({"events": [ev(1)], "sent_at": "now", "client": {"v": 2}})
    assert batch(client, body=body).get_json() == success(accepted=1)
    assert [row.occurred_at.second for row in stored(engine)] == [1]


def test_nul_in_the_rest_of_the_body_is_refused(client, engine):
    body = json.dumps({"events": [ev(1)], "client": {"name": "a\u0000b"}})
    assert "NUL" in assert_error(batch(client, body=body), 400)["message"]
    assert stored(engine) == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain;charset=UTF-8", "application/vnd.x+json", "APPLICATION/JSON; charset=utf-8", None],
)
def test_json_like_content_types_are_parsed(client, engine, content_type):
    assert batch(client, [ev(1)], content_type=content_type).get_json() == success(accepted=1)
    assert [row.occurred_at.second for row in stored(engine)] == [1]


@pytest.mark.parametrize(
    "content_type",
    ["text/html", "application/xml", "text/csv", "application/x-www-form-urlencoded"],
)
def test_other_content_types_are_415(client, engine, content_type):
    assert_error(batch(client, [ev(1)], content_type=content_type), 415)
    assert stored(engine) == []


# --- the cap and the size limit -------------------------------------------------------------------


def test_the_default_cap_is_1000_events(client, engine):
    events = [{"event": "e", "user_id": "u"} for _ in range(1001)]
    response = batch(client, events)
    assert_error(response, 413)
    assert "1000" in response.get_json()["message"]
    assert stored(engine) == []
    assert batch(client, events[:1000]).get_json() == success(accepted=1000)
    assert len(stored(engine)) == 1000


def test_the_cap_is_configurable_and_counts_ndjson_lines(make_app, engine):
    client = make_app(BATCH_MAX_EVENTS=3).test_client()
    assert_error(batch(client, [ev(i) for i in range(4)]), 413)
    # Blank lines do not count; bad lines do.
    assert_error(
        batch(client, body=ndjson(ev(1), "", ev(2), "oops", ev(3)), content_type=NDJSON), 413
    )
    assert stored(engine) == []
    assert batch(
        client, body=ndjson(ev(1), "", ev(2), "", ev(3), ""), content_type=NDJSON
    ).get_json() == success(accepted=3)
    assert len(stored(engine)) == 3


def test_a_body_over_the_size_limit_is_413(client, engine):
    events = [{"event": "e", "user_id": "u", "metadata": {"k": "x" * 2000}} for _ in range(600)]
    assert_error(batch(client, events), 413)
    assert stored(engine) == []


# --- NDJSON -------------------------------------------------------------------------------------


def test_ndjson_lines_are_events_and_blank_lines_are_skipped(client, engine):
    body = ndjson("", ev(0, event_id="n0"), "   ", ev(1), "\t", "", ev(2, event_id="n0"), "")
    response = batch(client, body=body, content_type=NDJSON)
    assert response.get_json() == success(accepted=2, duplicates=1)
    assert [row.occurred_at.second for row in stored(engine)] == [0, 1]


def test_ndjson_bad_lines_are_rejected_by_their_index_among_non_blank_lines(client, engine):
    body = ndjson(
        ev(0), "", "[1, 2]", "", '"play"', "{not json", ev(4), "null", '{"event": "e"}', "42"
    )
    response = batch(client, body=body, content_type=NDJSON)
    assert response.status_code == 200
    body = response.get_json()
    assert body["accepted"] == 2
    assert [(r["index"], r["message"]) for r in body["rejected"]] == [
        (1, "Event must be a JSON object"),
        (2, "Event must be a JSON object"),
        (3, "Malformed JSON"),
        (5, "Event must be a JSON object"),
        (6, "user_id is required"),
        (7, "Event must be a JSON object"),
    ]
    assert [row.occurred_at.second for row in stored(engine)] == [0, 4]


def test_ndjson_with_crlf_line_ends_and_a_charset(client, engine):
    body = ndjson(ev(0), ev(1)).replace("\n", "\r\n") + "\r\n"
    response = batch(client, body=body, content_type="application/x-ndjson; charset=utf-8")
    assert response.get_json() == success(accepted=2)
    assert [row.occurred_at.second for row in stored(engine)] == [0, 1]


def test_ndjson_line_that_is_a_whole_batch_object_is_just_a_bad_event(client, engine):
    body = ndjson({"events": [ev(0)]}, ev(1))
    response = batch(client, body=body, content_type=NDJSON)
    assert response.get_json()["rejected"] == [
        {"index": 0, "message": ("event is required; user_id is required")}
    ]
    assert [row.occurred_at.second for row in stored(engine)] == [1]


# --- gzip -----------------------------------------------------------------------------------------


def test_gzipped_json_and_ndjson(client, engine):
    assert batch(client, [ev(0), ev(1)], gzipped=True).get_json() == success(accepted=2)
    response = batch(client, body=ndjson(ev(2), "", "nope"), content_type=NDJSON, gzipped=True)
    assert response.get_json() == success(accepted=1, rejected=[(1, "Malformed JSON")])
    assert len(stored(engine)) == 3


def test_the_size_limit_applies_to_the_decompressed_body(make_app, engine):
    client = make_app(MAX_CONTENT_LENGTH=4096).test_client()
    fits = json.dumps({"events": [ev(0, metadata={"pad": "x" * 3000})]})
    assert len(fits) < 4096
    assert batch(client, body=fits, gzipped=True).get_json() == success(accepted=1)
    # Compresses to a few dozen bytes, well under the limit on the wire.
    over = json.dumps({"events": [ev(1, metadata={"pad": "x" * 5000})]})
    assert len(gzip.compress(over.encode())) < 4096
    assert_error(batch(client, body=over, gzipped=True), 413)
    assert len(stored(engine)) == 1


def _zeros_gzipped(mebibytes: int, members: int = 1) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    member = b"".join(compressor.compress(block) for _ in range(mebibytes)) + compressor.flush()
    return member * members  # concatenated gzip members are one valid gzip stream


@pytest.mark.parametrize("mebibytes, members", [(64, 1), (1, 512)])
def test_a_gzip_bomb_is_refused_without_inflating_it(client, engine, mebibytes, members):
    # 64 MiB in one gzip member, or 512 MiB in 512 members, each from under a megabyte:
    # inflating either whole would take that much memory before any limit could be checked.
    bomb = _zeros_gzipped(mebibytes, members)
    assert len(bomb) < 1024 * 1024
    tracemalloc.start()
    try:
        response = client.post(
            "/track/batch",
            data=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_error(response, 413)
    assert peak < 16 * 1024 * 1024
    assert stored(engine) == []


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not gzip at all", "Request body is not valid gzip data"),
        (gzip.compress(b'{"events": []}')[:-12], "Request body is truncated gzip data"),
    ],
)
def test_a_body_that_is_not_gzip_is_400(client, engine, data, message):
    response = client.post(
        "/track/batch",
        data=data,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert_error(response, 400, message=message)
    assert stored(engine) == []


def test_concatenated_gzip_members_are_one_body(client, engine):
    text_ = ndjson(ev(0), ev(1)) + "\n"
    half = len(text_) // 2
    data = gzip.compress(text_[:half].encode()) + gzip.compress(text_[half:].encode())
    response = client.post(
        "/track/batch", data=data, headers={"Content-Type": NDJSON, "Content-Encoding": "GZIP"}
    )
    assert response.get_json() == success(accepted=2)
    assert [row.occurred_at.second for row in stored(engine)] == [0, 1]


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "gzip, br"])
def test_other_content_encodings_are_415(client, engine, encoding):
    response = client.post(
        "/track/batch",
        data=json.dumps({"events": [ev(0)]}),
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert_error(response, 415)
    assert stored(engine) == []


# --- HTTP and failures ---------------------------------------------------------------------------


def test_cors_preflight_and_wrong_method(client):
    preflight = client.options(
        "/track/batch",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, Content-Encoding",
        },
    )
    assert preflight.status_code in (200, 204)
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Encoding" in preflight.headers["Access-Control-Allow-Headers"]
    wrong = client.get("/track/batch")
    assert_error(wrong, 405)
    assert "POST" in wrong.headers["Allow"]
    assert wrong.headers["Access-Control-Allow-Origin"] == "*"
    assert batch(client, [ev(0)]).headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("size", [4, 40])
def test_a_database_failure_mid_batch_stores_nothing(client, engine, backend, size):
    # The 3rd event makes the database fail the statement, after the first two went in.
    trigger = {
        "sqlite": [
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON events WHEN NEW.event = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        ],
        "postgresql": [
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.event = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON events FOR EACH ROW "
            "EXECUTE FUNCTION refuse_boom()",
        ],
    }[backend]
    drop = {
        "sqlite": ["DROP TRIGGER refuse_boom"],
        "postgresql": ["DROP TRIGGER refuse_boom ON events", "DROP FUNCTION refuse_boom()"],
    }
    with engine.begin() as conn:
        for statement in trigger:
            conn.execute(text(statement))
    try:
        events = [ev(0, event_id="a"), ev(1), ev(2, event="boom")]
        events += [ev(i % 60, event_id=f"e{i}") for i in range(3, size)]
        response = batch(client, events)
        body = assert_error(response, 500, message="Failed to log events")
        assert "boom" not in json.dumps(body)
        assert stored(engine) == []
    finally:
        with engine.begin() as conn:
            for statement in drop[backend]:
                conn.execute(text(statement))
    # The worker recovers: a batch of the same size goes through once the database accepts it
    # (on PostgreSQL the staging table, whose creation was rolled back, is created again).
    again = [ev(0, event_id="a"), ev(1)] + [ev(i % 60, event_id=f"r{i}") for i in range(2, size)]
    assert batch(client, again).get_json() == success(accepted=size)
    assert len(stored(engine)) == size


def test_an_unreachable_database_is_503_with_retry_after(app_factory, backend, tmp_path):
    app = app_factory(unreachable_url(backend, tmp_path))
    response = batch(app.test_client(), [ev(0)])
    assert_error(response, 503, message="Failed to log events")
    assert response.headers["Retry-After"]


def test_a_deadlock_between_two_batches_is_retried(client, engine, backend):
    """Two transactions inserting the same event_ids in opposite orders deadlock on PostgreSQL;
    the batch the database picks as the victim is run again instead of failing."""
    if backend != "postgresql":
        pytest.skip("SQLite serialises writers: two transactions never wait on each other")
    other = engine.connect()
    try:
        # Another writer takes B and, later, wants A; its deadlock check runs long after the
        # request's (1 s by default), so the request is the one PostgreSQL aborts.
        other.execute(text("SET deadlock_timeout = '20s'"))
        other.execute(
            text(
                "INSERT INTO events (event, user_id, occurred_at, received_at, "
                "event_id) VALUES ('other', 'u', now(), now(), 'B')"
            )
        )
        result = {}
        request = threading.Thread(
            target=lambda: result.update(
                response=batch(client, [ev(0, event_id="A"), ev(1, event_id="B")])
            )
        )
        request.start()
        _wait_until_blocked(engine, "INSERT INTO events")
        other.execute(
            text(
                "INSERT INTO events (event, user_id, occurred_at, received_at, "
                "event_id) VALUES ('other', 'u', now(), now(), 'A')"
            )
        )
        other.commit()
        request.join(timeout=60)
        response = result["response"]
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json() == success(duplicates=2)
    finally:
        other.close()
    assert sorted((row.event, row.event_id) for row in stored(engine)) == [
        ("other", "A"),
        ("other", "B"),
    ]


def _wait_until_blocked(engine, query_start: str, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query ~ :start"
                ),
                {"start": r"^\s*" + query_start},
            )
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the request never waited for the other transaction's lock")


# --- many clients at once ------------------------------------------------------------------------

# 8 client processes and 200 batches of 500 events with event_ids: 100,000 distinct events.
# Each batch is sent by SENDERS_PER_BATCH of the clients, at about the same time (the clients
# that share batches send them in the same order), so every event races against its copies in
# other gunicorn workers. Every client sending all 200 batches (800,000 events to validate)
# takes minutes on a 2-core machine; two senders per batch keep the race and the volume of
# distinct events, at a quarter of the work.
CLIENTS = 8
BATCHES = 200
BATCH_SIZE = 500
SENDERS_PER_BATCH = 2


def _batch_body(number: int) -> bytes:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    events = [
        {
            "event": ("play", "stop", "skip")[i % 3],
            "user_id": f"user{(number + i) % 97}",
            "timestamp": (base + timedelta(seconds=number * BATCH_SIZE + i)).isoformat(),
            "event_id": f"{number}-{i}",
        }
        for i in range(BATCH_SIZE)
    ]
    return json.dumps({"events": events}).encode()


def _batches_of(client: int) -> list[int]:
    """The batches a client sends, in the order it sends them (shared with its partners)."""
    groups = CLIENTS // SENDERS_PER_BATCH
    group = client % groups
    batches = [number for number in range(BATCHES) if number % groups == group]
    random.Random(group).shuffle(batches)
    return batches


def _client_process(url: str, client: int) -> tuple[int, int, list]:
    """Send this client's batches; (accepted, duplicates, failures)."""
    bodies = [(number, _batch_body(number)) for number in _batches_of(client)]
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    accepted = duplicates = 0
    failures = []
    for number, body in bodies:
        connection.request(
            "POST", "/track/batch", body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            failures.append((number, response.status, payload[:300]))
            continue
        result = json.loads(payload)
        accepted += result["accepted"]
        duplicates += result["duplicates"]
    connection.close()
    return accepted, duplicates, failures


def test_every_batch_is_sent_by_several_clients():
    senders = [0] * BATCHES
    for client in range(CLIENTS):
        for number in _batches_of(client):
            senders[number] += 1
    assert senders == [SENDERS_PER_BATCH] * BATCHES


@pytest.mark.live
@pytest.mark.slow
def test_concurrent_clients_sending_the_same_batches_store_each_event_once(live_server, engine):
    server = live_server(workers=4)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(CLIENTS, mp_context=context) as pool:
        results = list(pool.map(_client_process, [server.url] * CLIENTS, range(CLIENTS)))
    assert [failures for _, _, failures in results] == [[]] * CLIENTS, server.output()[-3000:]
    distinct = BATCHES * BATCH_SIZE
    assert sum(accepted for accepted, _, _ in results) == distinct
    assert sum(duplicates for _, duplicates, _ in results) == (SENDERS_PER_BATCH - 1) * distinct
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Event)) == distinct
        assert session.scalar(select(func.count(func.distinct(Event.event_id)))) == distinct
        assert (
            session.scalar(select(func.count()).select_from(Event).where(Event.event_id.is_(None)))
            == 0
        )


def test_the_openapi_document_describes_the_batch_endpoint(client):
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/track/batch"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-ndjson"}
    assert {"200", "400", "413", "415", "500", "503"} <= set(operation["responses"])
    response = document["components"]["schemas"]["TrackBatchResponse"]
    assert set(response["required"]) == {"status", "accepted", "duplicates", "rejected", "warnings"}


def test_the_readme_example_answers_as_documented(client, engine):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### POST /track/batch") :]
    example = section[section.index("```sh") : section.index("```", section.index("```sh") + 5)]
    sent = example[example.index("-d '") + 4 : example.index("'\n# ")]
    documented = "".join(
        line.lstrip("# ").strip()
        for line in example.splitlines()
        if line.startswith("# ") or line.startswith("#  ")
    )
    response = batch(client, body=sent)
    answer = json.loads(documented)
    assert response.get_json() == answer
    assert len(stored(engine)) == answer["accepted"] > 0


# --- edges: nesting depth and fields given twice, item by item ----------------------------------


def test_deep_and_repeated_items_are_rejected_and_the_others_stored(client, engine):
    lines = [
        json.dumps(ev(0)),
        json.dumps(ev(1, metadata=nested(600))),
        json.dumps(ev(2, metadata={"k": "\u0000"})),
        '{"event": "play", "user_id": "u", "user_id": ""}',
        json.dumps(ev(4, metadata=nested(64))),
    ]
    response = batch(client, body="\n".join(lines), content_type=NDJSON)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["accepted"] == 2
    messages = {item["index"]: item["message"] for item in body["rejected"]}
    assert set(messages) == {1, 2, 3}
    assert messages[1] == TOO_DEEP
    assert "user_id" in messages[3]
    assert len(stored(engine)) == 2


def test_a_json_batch_with_events_given_twice_is_refused(client, engine):
    body = f'{{"events": [{json.dumps(ev(0))}], "events": [{json.dumps(ev(1))}]}}'
    assert_error(batch(client, body=body), 400, field="events")
    assert stored(engine) == []


def test_ndjson_past_the_cap_is_413_before_its_lines_are_parsed(client, engine, monkeypatch):
    import analytics.api.batch as batch_module

    parsed = []
    real = batch_module.loads_strict
    monkeypatch.setattr(batch_module, "loads_strict", lambda line: parsed.append(1) or real(line))
    body = b"{}\n" * (1024 * 1024 // 3 - 10)  # a 1 MiB body of empty objects
    response = batch(client, body=body, content_type=NDJSON)
    assert_error(response, 413)
    assert parsed == []
    assert stored(engine) == []
