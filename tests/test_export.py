"""GET /events and GET /users/<user_id>/events: every stored event, oldest first, streamed as
NDJSON or CSV with the contract's fields; and an export imported again gives the same answers."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from sqlalchemy import update

from analytics import export
from analytics.models import Event
from tests.helpers import (
    assert_error,
    bearer,
    create_key,
    migrate,
    track_event,
    unreachable_url,
)

EVENTS = "/events?start_date=2025-01-01&end_date=2025-01-31"
FIELDS = ["event", "user_id", "timestamp", "metadata", "event_id", "received_at"]
ODD_USER = 'a/b c?d#e%f "é" 漢, ok'


def ndjson(response) -> list[dict]:
    assert response.status_code == 200, response.data
    assert response.mimetype == "application/x-ndjson"
    text = response.get_data(as_text=True)
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def received(engine, at: str) -> None:
    """Give every stored event the same received_at, so that exports can be compared."""
    with engine.begin() as conn:
        conn.execute(update(Event).values(received_at=export_time(at)))


def export_time(text: str):
    from analytics.ingest import parse_timestamp

    return parse_timestamp(text)


def test_each_line_has_the_contracts_fields_and_formats(client, engine):
    track_event(
        client,
        event="play",
        user_id="u1",
        timestamp="2025-01-18T14:30:00Z",
        metadata={"song": "s1", "n": [1, 2], "ü": "x, y: z"},
        event_id="e1",
    )
    track_event(client, event="stop", user_id="u1", timestamp="2025-01-18T14:31:00.25+01:00")
    received(engine, "2025-01-20T00:00:00.5Z")

    lines = ndjson(client.get(EVENTS))

    assert [list(line) for line in lines] == [FIELDS, FIELDS]
    assert lines == [
        {
            "event": "stop",
            "user_id": "u1",
            "timestamp": "2025-01-18T13:31:00.250Z",
            "metadata": None,
            "event_id": None,
            "received_at": "2025-01-20T00:00:00.500Z",
        },
        {
            "event": "play",
            "user_id": "u1",
            "timestamp": "2025-01-18T14:30:00.000Z",
            "metadata": {"song": "s1", "n": [1, 2], "ü": "x, y: z"},
            "event_id": "e1",
            "received_at": "2025-01-20T00:00:00.500Z",
        },
    ]


def test_sub_millisecond_digits_are_kept_so_that_nothing_stored_is_lost(client):
    track_event(client, event="play", user_id="u", timestamp="2025-01-18T14:30:00.123456Z")
    [line] = ndjson(client.get(EVENTS))
    assert line["timestamp"] == "2025-01-18T14:30:00.123456Z"


def test_oldest_first_then_by_arrival(client):
    for n, second in enumerate([30, 10, 10, 20, 10]):
        track_event(client, event=f"e{n}", user_id="u", timestamp=f"2025-01-05T00:00:{second:02d}Z")
    assert [line["event"] for line in ndjson(client.get(EVENTS))] == ["e1", "e2", "e4", "e3", "e0"]


def test_csv_is_rfc_4180_with_the_exact_header(client, engine):
    track_event(
        client,
        event="play",
        user_id='say "hi", then\nleave',
        timestamp="2025-01-02T00:00:00Z",
        metadata={"a": 'q"uote', "b": [1, {"c": None}]},
        event_id="x,1",
    )
    track_event(client, event="stop", user_id="plain", timestamp="2025-01-03T00:00:00Z")
    received(engine, "2025-01-04T00:00:00Z")

    response = client.get(EVENTS + "&format=csv")

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    body = response.get_data(as_text=True)
    assert body.startswith("timestamp,event,user_id,event_id,received_at,metadata\r\n")
    assert body.endswith("\r\n") and "\n" not in body.replace("\r\n", "").replace('then\nleave', "")
    assert body.splitlines(keepends=True)[-1] == (
        "2025-01-03T00:00:00.000Z,stop,plain,,2025-01-04T00:00:00.000Z,\r\n"
    )
    rows = list(csv.reader(io.StringIO(body, newline="")))
    assert rows == [
        ["timestamp", "event", "user_id", "event_id", "received_at", "metadata"],
        [
            "2025-01-02T00:00:00.000Z",
            "play",
            'say "hi", then\nleave',
            "x,1",
            "2025-01-04T00:00:00.000Z",
            '{"a":"q\\"uote","b":[1,{"c":null}]}',
        ],
        ["2025-01-03T00:00:00.000Z", "stop", "plain", "", "2025-01-04T00:00:00.000Z", ""],
    ]


def test_metadata_in_csv_is_compact_json_whatever_its_strings_hold(client):
    metadata = {"k, x": 'v: y\\" , z', "n": [1, 2.5, {"a": None}], "é": "\u0001\n", "e": {}}
    track_event(
        client, event="play", user_id="u", timestamp="2025-01-02T00:00:00Z", metadata=metadata
    )
    [_, row] = list(
        csv.reader(
            io.StringIO(client.get(EVENTS + "&format=csv").get_data(as_text=True), newline="")
        )
    )
    assert json.loads(row[5]) == metadata
    # Compact: no space outside the strings.
    assert row[5].replace(' , ', '').replace('k, x', '').replace('v: y', '').count(" ") == 0


def test_the_range_filters_and_zone(client):
    for at, name, user in [
        ("2024-12-31T23:59:59.999Z", "play", "u1"),
        ("2025-01-01T00:00:00Z", "play", "u1"),
        ("2025-01-31T23:59:59.999Z", "stop", "u2"),
        ("2025-02-01T00:00:00Z", "play", "u2"),
        ("2025-01-15T00:00:00Z", "pause", "u1"),
    ]:
        track_event(client, event=name, user_id=user, timestamp=at)

    def stamps(query: str) -> list[str]:
        return [line["timestamp"] for line in ndjson(client.get(EVENTS + query))]

    assert stamps("") == [
        "2025-01-01T00:00:00.000Z",
        "2025-01-15T00:00:00.000Z",
        "2025-01-31T23:59:59.999Z",
    ]
    assert stamps("&event=play&event=stop") == [
        "2025-01-01T00:00:00.000Z",
        "2025-01-31T23:59:59.999Z",
    ]
    assert stamps("&user_id=u2") == ["2025-01-31T23:59:59.999Z"]
    assert stamps("&user_id=") == stamps("")  # empty means every user, as in /metrics
    # Local dates in Kathmandu (+05:45): 2025-01-01 starts at 2024-12-31T18:15Z.
    assert stamps("&tz=Asia/Kathmandu") == [
        "2024-12-31T23:59:59.999Z",
        "2025-01-01T00:00:00.000Z",
        "2025-01-15T00:00:00.000Z",
    ]
    # Parameters of /metrics that an export does not take are ignored, like unknown ones.
    assert stamps("&group_by=bogus&fill=bogus&week_start=x") == stamps("")


def test_ranges_to_the_ends_of_the_calendar(client):
    track_event(client, event="play", user_id="u", timestamp="2025-01-02T12:00:00Z")
    for tz in ("UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"):
        for start, end, expected in [
            ("0001-01-01", "9999-12-31", 1),
            ("9999-12-31", "9999-12-31", 0),
            ("0001-01-01", "0001-01-01", 0),
            ("2025-01-01", "9999-12-30", 1),
            ("0001-01-01", "2024-12-31", 0),
            ("2025-01-04", "9999-12-31", 0),
        ]:
            response = client.get(f"/events?start_date={start}&end_date={end}&tz={tz}")
            assert len(ndjson(response)) == expected, (start, end, tz)


def test_a_local_day_that_a_zone_skipped_holds_nothing(client):
    # Samoa went from 29 to 31 December 2011: no instant has the local date 2011-12-30.
    track_event(client, event="play", user_id="u", timestamp="2011-12-30T09:59:59Z")  # 29th, 23:59
    day = "/events?start_date=2011-12-30&end_date=2011-12-30&tz=Pacific/Apia"
    assert ndjson(client.get(day)) == []
    assert (
        len(ndjson(client.get(day.replace("start_date=2011-12-30", "start_date=2011-12-29")))) == 1
    )


@pytest.mark.parametrize(
    "query, message",
    [
        ("", "start_date and end_date are required"),
        ("?start_date=2025-01-01", "start_date and end_date are required"),
        ("?start_date=2025-02-30&end_date=2025-03-01", "Invalid date format. Use YYYY-MM-DD"),
        ("?start_date=2025-03-01&end_date=2025-02-01", "start_date must not be after end_date"),
        (
            "?start_date=2025-01-01&end_date=2025-01-02&tz=Mars/Base",
            "tz must be an IANA time zone name, e.g. Europe/Berlin",
        ),
        ("?start_date=2025-01-01&end_date=2025-01-02&event=", "event must not be empty"),
        (
            "?start_date=2025-01-01&end_date=2025-01-02&"
            + "&".join(f"event=e{n}" for n in range(51)),
            "at most 50 event names",
        ),
        (
            "?start_date=2025-01-01&end_date=2025-01-02&format=json",
            "format must be one of: ndjson, csv",
        ),
        (
            "?start_date=2025-01-01&end_date=2025-01-02&format=CSV",
            "format must be one of: ndjson, csv",
        ),
        (
            "?start_date=2025-01-01&end_date=2025-01-02&format=",
            "format must be one of: ndjson, csv",
        ),
        # The range comes first, as on /metrics.
        ("?start_date=2025-01-01&format=xml", "start_date and end_date are required"),
        (
            "?start_date=2025-01-01&end_date=2025-01-02&tz=x&format=xml",
            "tz must be an IANA time zone name, e.g. Europe/Berlin",
        ),
    ],
)
def test_invalid_queries_get_the_contracts_message(client, query, message):
    assert_error(client.get("/events" + query), 400, message)


def test_an_empty_range_is_an_empty_body_and_csv_still_has_its_header(client):
    assert ndjson(client.get(EVENTS)) == []
    body = client.get(EVENTS + "&format=csv").get_data(as_text=True)
    assert body == "timestamp,event,user_id,event_id,received_at,metadata\r\n"


def test_the_export_streams_from_an_open_cursor_in_chunks(app, client, engine, monkeypatch):
    for second in range(9):
        track_event(client, event="play", user_id="u", timestamp=f"2025-01-02T00:00:{second:02d}Z")
    monkeypatch.setattr(export, "ROWS_PER_CHUNK", 2)
    pool = app.extensions["analytics.db"]["engine"].pool

    response = client.get(EVENTS, buffered=False)
    assert response.is_streamed
    chunks = iter(response.response)
    first = next(chunks)
    # The first rows are out while the query is still being read: its connection is busy.
    assert first.count(b"\n") == 2
    assert pool.checkedout() == 1
    rest = list(chunks)
    response.close()
    assert [chunk.count(b"\n") for chunk in rest] == [2, 2, 2, 1]
    assert pool.checkedout() == 0


def test_a_client_that_goes_away_gives_the_connection_back(app, client, monkeypatch):
    for second in range(9):
        track_event(client, event="play", user_id="u", timestamp=f"2025-01-02T00:00:{second:02d}Z")
    monkeypatch.setattr(export, "ROWS_PER_CHUNK", 2)
    response = client.get(EVENTS, buffered=False)
    next(iter(response.response))
    response.close()  # what the server does when the client disconnects
    assert app.extensions["analytics.db"]["engine"].pool.checkedout() == 0


def test_a_database_that_fails_is_a_json_error(app_factory, backend, tmp_path):
    app = app_factory(unreachable_url(backend, tmp_path))
    for path in (EVENTS, "/users/u/events"):
        body = assert_error(app.test_client().get(path), 503)
        assert body["message"].startswith("Failed to export")


def test_a_users_events_oldest_first_with_any_characters_in_the_id(client, engine):
    track_event(
        client, event="stop", user_id=ODD_USER, timestamp="2025-01-03T00:00:00Z", event_id="2"
    )
    track_event(
        client, event="play", user_id=ODD_USER, timestamp="2021-06-01T00:00:00Z", event_id="1"
    )
    track_event(client, event="play", user_id="a", timestamp="2025-01-03T00:00:00Z")
    track_event(client, event="play", user_id="a/b c?d", timestamp="2025-01-03T00:00:00Z")

    lines = ndjson(client.get(f"/users/{quote(ODD_USER, safe='')}/events"))

    assert [(line["user_id"], line["event_id"]) for line in lines] == [
        (ODD_USER, "1"),
        (ODD_USER, "2"),
    ]
    assert list(lines[0]) == FIELDS
    unknown = client.get("/users/nobody/events")
    assert unknown.status_code == 200 and unknown.data == b""


def test_reads_and_admin_keys(make_app):
    app = make_app(AUTH_MODE="reads")
    client = app.test_client()
    reader = create_key(app, "reader", "read")
    admin = create_key(app, "admin", "admin")

    assert_error(client.get(EVENTS), 401, "API key required")
    assert client.get(EVENTS, headers=bearer(reader)).status_code == 200
    assert client.get(EVENTS, headers=bearer(admin)).status_code == 200
    assert_error(
        client.get("/users/u/events", headers=bearer(reader)),
        403,
        "This API key does not allow admin",
    )
    assert client.get("/users/u/events", headers=bearer(admin)).status_code == 200


# --- The round trip ----------------------------------------------------------------------------


def answers(client) -> list:
    queries = [
        "/metrics?start_date=2020-01-01&end_date=2030-12-31",
        "/metrics?start_date=2025-01-01&end_date=2025-03-31&group_by=hour&tz=Asia/Kathmandu",
        "/metrics?start_date=2025-01-01&end_date=2025-03-31&group_by=week&user_id=u1",
        "/sessions?start_date=2020-01-01&end_date=2030-12-31",
        "/sessions?start_date=2025-01-01&end_date=2025-03-31&group_by=hour",
        "/sessions?start_date=2025-01-01&end_date=2025-03-31&user_id=u2&tz=America/Los_Angeles",
    ]
    found = []
    for query in queries:
        response = client.get(query)
        assert response.status_code == 200
        found.append(response.get_json()["data"])
    return found


def varied_events(client) -> None:
    """Sessions whose pairing depends on arrival order (equal timestamps), durations that round
    differently by a microsecond, metadata of every kind, events without event_id."""
    events = [
        ("play", "u1", "2025-01-05T10:00:00Z", None, None),
        ("play", "u1", "2025-01-05T10:00:00Z", None, {"n": 1}),
        ("stop", "u1", "2025-01-05T10:00:00Z", "s1", None),
        ("stop", "u1", "2025-01-05T10:00:02.5Z", None, None),
        ("play", "u2", "2025-02-01T08:00:00.0004Z", "p2", {"q": 'x, "y"', "é": ["\n"]}),
        ("stop", "u2", "2025-02-01T08:00:02.5Z", "s2", None),
        ("play", ODD_USER, "2025-03-01T23:59:59.999Z", None, {"deep": {"a": [1, 2.5, None]}}),
        ("pause", ODD_USER, "2025-03-02T00:00:00Z", "x", None),
        ("stop", ODD_USER, "2025-03-02T00:01:00Z", None, None),
        ("purchase", "u1", "2024-12-31T23:00:00Z", None, {}),
    ]
    for name, user, at, event_id, metadata in events:
        track_event(
            client, event=name, user_id=user, timestamp=at, event_id=event_id, metadata=metadata
        )


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_an_export_imported_into_an_empty_database_gives_the_same_answers(
    client, app_factory, scratch_database, tmp_path, fmt
):
    migrate(scratch_database)
    varied_events(client)
    exported = client.get(f"/events?start_date=2000-01-01&end_date=2099-12-31&format={fmt}")
    assert exported.status_code == 200
    source = tmp_path / f"export.{fmt}"
    source.write_bytes(exported.data)

    imported = app_factory(scratch_database)
    result = imported.test_cli_runner().invoke(args=["import", str(source)])
    assert result.exit_code == 0, result.output
    assert "10 accepted, 0 duplicates, 0 rejected" in result.output

    again = imported.test_client()
    assert answers(again) == answers(client)
    # The very same export, received_at included: nothing was lost or changed on the way.
    assert (
        again.get(f"/events?start_date=2000-01-01&end_date=2099-12-31&format={fmt}").data
        == exported.data
    )


def test_import_keeps_received_at_refuses_a_bad_one_and_never_takes_a_later_one(
    app, engine, tmp_path
):
    source = tmp_path / "in.ndjson"
    source.write_text(
        "\n".join(
            json.dumps(line)
            for line in [
                {
                    "event": "play",
                    "user_id": "u",
                    "timestamp": "2025-01-02T00:00:00Z",
                    "received_at": "2025-01-03T00:00:00.250Z",
                },
                {"event": "play", "user_id": "u", "received_at": "yesterday"},
                {"event": "play", "user_id": "u", "received_at": 5},
                {
                    "event": "stop",
                    "user_id": "u",
                    "timestamp": "2025-01-02T00:00:01Z",
                    "received_at": "2999-01-01T00:00:00Z",
                },
            ]
        )
        + "\n"
    )
    result = app.test_cli_runner().invoke(args=["import", str(source)])
    assert result.exit_code == 3, result.output
    assert "2 accepted, 0 duplicates, 2 rejected" in result.output
    for line in (2, 3):
        assert (
            f"line {line}: received_at must be an ISO 8601 date and time, "
            "e.g. 2025-01-18T14:30:00.000Z"
        ) in result.output
    with engine.connect() as conn:
        play, stop = conn.execute(
            Event.__table__.select().order_by(Event.__table__.c.occurred_at)
        ).all()
    assert play.received_at == export_time("2025-01-03T00:00:00.250Z")
    assert export_time("2025-01-04T00:00:00Z") < stop.received_at <= datetime.now(UTC)


def test_times_keep_their_milliseconds_always_and_microseconds_where_there_are_any():
    # SQLite's text has six digits always; PostgreSQL's drops the trailing zeros.
    texts = {
        "2025-01-02 03:04:05.000000": "2025-01-02T03:04:05.000Z",
        "2025-01-02 03:04:05.120000": "2025-01-02T03:04:05.120Z",
        "2025-01-02 03:04:05.000001": "2025-01-02T03:04:05.000001Z",
        "2025-01-02 03:04:05.100010": "2025-01-02T03:04:05.100010Z",
        "2025-01-02 03:04:05": "2025-01-02T03:04:05.000Z",
        "2025-01-02 03:04:05.1": "2025-01-02T03:04:05.100Z",
        "2025-01-02 03:04:05.12": "2025-01-02T03:04:05.120Z",
        "2025-01-02 03:04:05.123": "2025-01-02T03:04:05.123Z",
        "2025-01-02 03:04:05.1234": "2025-01-02T03:04:05.123400Z",
        "2025-01-02 03:04:05.12345": "2025-01-02T03:04:05.123450Z",
        "0099-01-02 03:04:05.123456": "0099-01-02T03:04:05.123456Z",
    }
    assert export._iso_times(list(texts)) == list(texts.values())


def test_a_chunk_quotes_only_the_csv_fields_that_need_it_and_escapes_each_json_string():
    at = "2025-01-02 03:04:05.000000"
    rows = [
        (at, "plain", "a,b", None, at, None),
        (at, 'say "hi"', "u", "id\n1", at, '{"k":1}'),
        (at, "plain", "u", "id", at, "1"),
    ]
    t = "2025-01-02T03:04:05.000Z"
    assert export.csv_chunk(rows).decode() == (
        f'{t},plain,"a,b",,{t},\r\n'
        f'{t},"say ""hi""",u,"id\n1",{t},"{{""k"":1}}"\r\n'
        f"{t},plain,u,id,{t},1\r\n"
    )
    lines = export.ndjson_chunk(rows).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"event": e, "user_id": u, "timestamp": t, "metadata": m, "event_id": i, "received_at": t}
        for e, u, i, m in [
            ("plain", "a,b", None, None),
            ('say "hi"', "u", "id\n1", {"k": 1}),
            ("plain", "u", "id", 1),
        ]
    ]
