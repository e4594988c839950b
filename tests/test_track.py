"""POST /track: every rule of the contract, on both backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import (
    FUTURE_WARNING,
    SUCCESS,
    TOO_DEEP,
    TRUNCATED_WARNING,
    assert_error,
    metadata_of_size,
    nested,
    post,
    stored,
)


def test_readme_example_is_stored_as_sent(client, engine):
    body = {
        "event": "play",
        "user_id": "user123",
        "timestamp": "2025-01-18T14:30:00Z",
        "metadata": {"song_id": "song456", "device": "mobile", "platform": "ios"},
    }
    response = post(client, body)
    assert response.status_code == 200
    assert response.get_json() == SUCCESS
    assert response.mimetype == "application/json"
    [row] = stored(engine)
    assert (row.event, row.user_id) == ("play", "user123")
    assert row.occurred_at == datetime(2025, 1, 18, 14, 30, tzinfo=UTC)
    assert row.meta == body["metadata"]


def test_missing_timestamp_uses_server_time(client, engine):
    before = datetime.now(UTC)
    assert post(client, {"event": "play", "user_id": "u"}).get_json() == SUCCESS
    after = datetime.now(UTC)
    [row] = stored(engine)
    assert before - timedelta(milliseconds=1) <= row.occurred_at <= after
    assert before - timedelta(milliseconds=1) <= row.received_at <= after
    assert row.meta is None


def test_null_timestamp_and_metadata_mean_absent(client, engine):
    response = post(client, {"event": "play", "user_id": "u", "timestamp": None, "metadata": None})
    assert response.get_json() == SUCCESS
    [row] = stored(engine)
    assert row.meta is None
    assert abs(row.occurred_at - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize(
    "sent, expected",
    [
        ("2025-01-18T14:30:00Z", datetime(2025, 1, 18, 14, 30)),
        ("2025-01-18T14:30:00z", datetime(2025, 1, 18, 14, 30)),
        ("2025-01-18T14:30:00", datetime(2025, 1, 18, 14, 30)),
        ("2025-01-18T16:30:00+02:00", datetime(2025, 1, 18, 14, 30)),
        ("2025-01-18T09:00:00-05:30", datetime(2025, 1, 18, 14, 30)),
        ("2025-01-18T00:30:00+01:00", datetime(2025, 1, 17, 23, 30)),
        ("2025-01-18T14:30:00.123Z", datetime(2025, 1, 18, 14, 30, 0, 123000)),
        ("2025-01-18T14:30:00.123456789+00:00", datetime(2025, 1, 18, 14, 30, 0, 123456)),
        ("2025-01-18T14:30:00.5", datetime(2025, 1, 18, 14, 30, 0, 500000)),
    ],
)
def test_timestamp_is_normalised_to_utc(client, engine, sent, expected):
    response = post(client, {"event": "play", "user_id": "u", "timestamp": sent})
    assert response.get_json() == SUCCESS
    [row] = stored(engine)
    assert row.occurred_at == expected.replace(tzinfo=UTC)
    assert row.meta is None  # a past timestamp adds no warning


@pytest.mark.parametrize(
    "sent",
    [
        "2025-01-18",
        "18/01/2025 14:30",
        "2025-01-18T25:00:00Z",
        "2025-02-30T10:00:00Z",
        "2025-13-01T10:00:00Z",
        "yesterday",
        "",
        "2025-01-18T14:30:00+24:00",
        1737210600,
        1737210600.5,
        True,
        ["2025-01-18T14:30:00Z"],
        {"at": "2025-01-18T14:30:00Z"},
    ],
)
def test_invalid_timestamp_is_refused(client, engine, sent):
    response = post(client, {"event": "play", "user_id": "u", "timestamp": sent})
    assert_error(response, 400, field="timestamp")
    assert stored(engine) == []


def test_future_timestamp_is_replaced_with_a_warning(client, engine):
    future = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = datetime.now(UTC)
    response = post(
        client,
        {"event": "play", "user_id": "u", "timestamp": future, "metadata": {"song_id": "s1"}},
    )
    assert response.status_code == 200
    assert response.get_json() == {**SUCCESS, "warnings": [FUTURE_WARNING]}
    [row] = stored(engine)
    assert before - timedelta(milliseconds=1) <= row.occurred_at <= datetime.now(UTC)
    assert row.meta == {
        "song_id": "s1",
        "timestamp_warning": FUTURE_WARNING,
        "original_timestamp": future,
    }


def test_future_timestamp_without_metadata_creates_it(client, engine):
    response = post(
        client, {"event": "play", "user_id": "u", "timestamp": "2999-01-01T00:00:00+05:00"}
    )
    assert response.get_json()["warnings"] == [FUTURE_WARNING]
    [row] = stored(engine)
    assert row.meta == {
        "timestamp_warning": FUTURE_WARNING,
        "original_timestamp": "2999-01-01T00:00:00+05:00",
    }


def test_metadata_of_exactly_4096_bytes_is_kept(client, engine):
    metadata = metadata_of_size(4096)
    assert post(client, {"event": "e", "user_id": "u", "metadata": metadata}).get_json() == SUCCESS
    [row] = stored(engine)
    assert row.meta == metadata


def test_metadata_over_4096_bytes_is_replaced(client, engine):
    metadata = metadata_of_size(4097)
    response = post(client, {"event": "e", "user_id": "u", "metadata": metadata})
    assert response.get_json() == {**SUCCESS, "warnings": [TRUNCATED_WARNING]}
    [row] = stored(engine)
    assert row.meta == {"warning": TRUNCATED_WARNING, "originalSize": 4097}


def test_metadata_size_counts_utf8_bytes_not_characters(client, engine):
    # 2-byte characters: fewer than 4096 characters but more than 4096 bytes.
    metadata = metadata_of_size(4098, char="é")
    assert len(json.dumps(metadata, ensure_ascii=False)) < 4096
    response = post(client, {"event": "e", "user_id": "u", "metadata": metadata})
    assert response.get_json()["warnings"] == [TRUNCATED_WARNING]
    assert stored(engine)[0].meta["originalSize"] == 4098


def test_metadata_size_ignores_whitespace_of_the_request(client, engine):
    metadata = metadata_of_size(4096)
    pretty = json.dumps({"event": "e", "user_id": "u", "metadata": metadata}, indent=8)
    assert post(client, pretty).get_json() == SUCCESS
    assert stored(engine)[0].meta == metadata


def test_truncation_and_future_timestamp_together(client, engine):
    response = post(
        client,
        {
            "event": "e",
            "user_id": "u",
            "metadata": metadata_of_size(5000),
            "timestamp": "2999-01-01T00:00:00Z",
        },
    )
    assert response.get_json()["warnings"] == [TRUNCATED_WARNING, FUTURE_WARNING]
    assert stored(engine)[0].meta == {
        "warning": TRUNCATED_WARNING,
        "originalSize": 5000,
        "timestamp_warning": FUTURE_WARNING,
        "original_timestamp": "2999-01-01T00:00:00Z",
    }


def test_nested_metadata_round_trips(client, engine):
    metadata = {
        "order_id": "o1",
        "total": 299.99,
        "items": ["p1", {"sku": "x", "qty": 2}],
        "flags": {"gift": True, "note": None},
        "名前": "ünïcode ✓",
    }
    assert (
        post(client, {"event": "purchase", "user_id": "u", "metadata": metadata}).status_code == 200
    )
    assert stored(engine)[0].meta == metadata


@pytest.mark.parametrize("metadata", [[1, 2], "text", 3, True])
def test_metadata_must_be_an_object(client, engine, metadata):
    response = post(client, {"event": "e", "user_id": "u", "metadata": metadata})
    assert_error(response, 400, field="metadata")
    assert stored(engine) == []


@pytest.mark.parametrize("field", ["event", "user_id"])
@pytest.mark.parametrize("value", [None, "", "   ", "\t\n", 5, ["play"], {"a": 1}, "x" * 256])
def test_name_fields_are_validated(client, engine, field, value):
    body = {"event": "play", "user_id": "u"}
    body[field] = value
    assert_error(post(client, body), 400, field=field)
    assert stored(engine) == []


@pytest.mark.parametrize("field", ["event", "user_id"])
def test_name_fields_are_required(client, engine, field):
    body = {"event": "play", "user_id": "u"}
    del body[field]
    assert_error(post(client, body), 400, message=f"{field} is required", field=field)
    assert stored(engine) == []


@pytest.mark.parametrize("field", ["event", "user_id"])
def test_name_fields_accept_255_characters(client, engine, field):
    body = {"event": "play", "user_id": "u", field: "é" * 255}
    assert post(client, body).status_code == 200
    assert getattr(stored(engine)[0], field) == "é" * 255


def test_event_named_date_is_reserved(client, engine):
    assert_error(post(client, {"event": "date", "user_id": "u"}), 400, field="event")
    assert post(client, {"event": "Date", "user_id": "u"}).get_json() == SUCCESS
    assert post(client, {"event": "play", "user_id": "date"}).get_json() == SUCCESS
    # Only the event name "date" is reserved: the other two are stored as sent.
    assert [(row.event, row.user_id) for row in stored(engine)] == [("Date", "u"), ("play", "date")]


def test_unknown_fields_are_ignored(client, engine):
    response = post(client, {"event": "e", "user_id": "u", "session": 7, "extra": {"a": [1]}})
    assert response.get_json() == SUCCESS
    assert len(stored(engine)) == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "Application/Json; Charset=UTF-8",
        "application/vnd.api+json",
        "application/ld+json",
        "text/plain",
        "text/plain;charset=UTF-8",
        None,
    ],
)
def test_json_like_content_types_are_parsed(client, engine, content_type):
    body = json.dumps({"event": "beacon", "user_id": "u"})
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/track", data=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    assert stored(engine)[0].event == "beacon"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
    ],
)
def test_other_content_types_are_415(client, engine, content_type):
    body = json.dumps({"event": "e", "user_id": "u"})
    assert_error(client.post("/track", data=body, headers={"Content-Type": content_type}), 415)
    assert stored(engine) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"{'event': 'e'}",
        b'{"event": "e", "user_id": "u"',
        b"not json",
        b'{"event": "e", "user_id": "u", "n": NaN}',
        b'{"event": "e", "user_id": "u", "n": Infinity}',
        b'{"event": "e", "user_id": "u", "n": 1e999}',
        b"\xff\xfe{}",
        b'{"a": 1} {"b": 2}',
    ],
)
def test_malformed_json_is_400(client, engine, body):
    assert_error(post(client, body), 400, message="Malformed JSON in request body")
    assert stored(engine) == []


@pytest.mark.parametrize(
    "body", [b"[]", b'[{"event": "e", "user_id": "u"}]', b'"play"', b"42", b"null", b"true"]
)
def test_json_that_is_not_an_object_is_400(client, engine, body):
    assert_error(post(client, body), 400, message="Request body must be a JSON object")
    assert stored(engine) == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"event": "pl\u0000ay", "user_id": "u"}, "event"),
        ({"event": "play", "user_id": "u\u0000"}, "user_id"),
        ({"event": "play", "user_id": "u", "metadata": {"k": "v\u0000"}}, "metadata"),
        ({"event": "play", "user_id": "u", "metadata": {"k\u0000": "v"}}, "metadata"),
        ({"event": "play", "user_id": "u", "metadata": {"a": [{"b": ["\u0000"]}]}}, "metadata"),
        ({"event": "play", "user_id": "u", "timestamp": "2025-01-18T14:30:00Z\u0000"}, "timestamp"),
        ({"event": "play", "user_id": "u", "ignored": "\u0000"}, "ignored"),
    ],
)
def test_nul_characters_are_refused(client, engine, body, field):
    assert_error(post(client, body), 400, field=field)
    assert stored(engine) == []


def test_body_over_the_limit_is_413(client, engine):
    body = json.dumps({"event": "e", "user_id": "u", "metadata": {"k": "x" * (1024 * 1024)}})
    assert_error(post(client, body), 413)
    assert stored(engine) == []


def test_body_limit_is_configurable(make_app, engine):
    client = make_app(MAX_CONTENT_LENGTH=2048).test_client()
    assert (
        post(client, {"event": "e", "user_id": "u", "metadata": {"k": "x" * 1500}}).status_code
        == 200
    )
    assert_error(post(client, {"event": "e", "user_id": "u", "metadata": {"k": "x" * 2100}}), 413)
    assert len(stored(engine)) == 1


def test_several_field_errors_are_reported_together(client):
    body = assert_error(post(client, {"event": "", "user_id": 3, "timestamp": "soon"}), 400)
    assert set(body["errors"]) == {"event", "user_id", "timestamp"}
    assert body["message"].index("event") < body["message"].index("user_id")


# --- edges: nesting depth, fields given twice, the end of time ----------------------------------


def test_metadata_nested_64_levels_is_stored(client, engine):
    response = post(client, {"event": "play", "user_id": "u", "metadata": nested(64)})
    assert response.get_json() == SUCCESS
    [row] = stored(engine)
    assert row.meta == nested(64)


@pytest.mark.parametrize("levels", [65, 400, 900])
def test_metadata_nested_deeper_than_64_levels_is_refused(client, engine, levels):
    body = json.dumps({"event": "play", "user_id": "u", "metadata": nested(levels)})
    assert_error(post(client, body), 400, message=TOO_DEEP, field="metadata")
    assert stored(engine) == []


def test_deep_nesting_beside_a_nul_is_refused_not_a_crash(client, engine):
    body = json.dumps({"event": "play", "user_id": "u", "other": nested(900), "x": "\u0000"})
    assert_error(post(client, body), 400, field="x")
    assert stored(engine) == []


@pytest.mark.parametrize(
    "field, first, second",
    [
        ("user_id", "valid", ""),
        ("user_id", "", "valid"),
        ("event", "play", "stop"),
        ("event_id", "a", "b"),
        ("unknown", 1, 2),
    ],
)
def test_a_field_given_twice_is_refused(client, engine, field, first, second):
    others = {"event": "play", "user_id": "u"}
    others.pop(field, None)
    body = (
        "{"
        + ", ".join(
            [f'"{name}": {json.dumps(value)}' for name, value in others.items()]
            + [f'"{field}": {json.dumps(first)}', f'"{field}": {json.dumps(second)}']
        )
        + "}"
    )
    assert_error(post(client, body), 400, field=field)
    assert stored(engine) == []


def test_a_metadata_key_given_twice_keeps_its_last_value(client, engine):
    body = '{"event": "play", "user_id": "u", "metadata": {"k": 1, "j": {"a": 1, "a": 2}, "k": 3}}'
    assert post(client, body).get_json() == SUCCESS
    [row] = stored(engine)
    assert row.meta == {"k": 3, "j": {"a": 2}}


def test_a_timestamp_past_the_end_of_time_is_a_future_timestamp(client, engine):
    sent = "9999-12-31T23:59:59-01:00"
    before = datetime.now(UTC)
    response = post(client, {"event": "play", "user_id": "u", "timestamp": sent})
    assert response.get_json() == {**SUCCESS, "warnings": [FUTURE_WARNING]}
    [row] = stored(engine)
    assert before <= row.occurred_at <= datetime.now(UTC)
    assert row.meta == {"timestamp_warning": FUTURE_WARNING, "original_timestamp": sent}
