"""Logs, from a live gunicorn: each line written once, no event data or secret in them, the JSON
access log with its request id (sent back as X-Request-Id) and key name; and /openapi.json
naming no server taken from the request."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.helpers import LiveServer, create_key_with_flask

SECRET_USER = "user-7f3a9c-secret"
SECRET_EVENT = "event-b81d44-secret"


def send(
    server, method: str, path: str, body: dict | None = None, headers: dict | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body=json.dumps(body) if body is not None else None,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


def output_after(server, wanted: str, timeout: float = 10) -> str:
    """The server's log once ``wanted`` appears in it (lines are flushed as they come)."""
    deadline = time.monotonic() + timeout
    while wanted not in (text := server.output()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return text


@pytest.fixture
def tableless_server(tmp_path):
    """gunicorn on an SQLite file without the events table, so that every write fails with
    an error that the database reports along with the statement."""
    server = LiveServer(
        f"sqlite:///{tmp_path / 'empty.db'}", workers=1, env={"LOG_LEVEL": "info"}
    ).start()
    yield server
    server.stop()


@pytest.mark.live
def test_an_error_is_logged_once_without_the_events_data(tableless_server):
    response = send(
        tableless_server,
        "POST",
        "/track",
        {"event": SECRET_EVENT, "user_id": SECRET_USER, "metadata": {"song": "secret-song"}},
    )
    # A database without its tables is a fault to fix, not an outage to wait out.
    assert response.status == 500
    text = output_after(tableless_server, "no such table")
    # The app's one record of the failure, with its traceback, written once.
    assert text.count("ERROR analytics: database error") == 1, text
    for secret in (SECRET_USER, SECRET_EVENT, "secret-song"):
        assert secret not in text, text


@pytest.mark.live
@pytest.mark.parametrize("backend", ["sqlite"])
def test_json_access_log_with_request_id_and_key_name(live_server, database_url):
    key = create_key_with_flask(database_url, "beacon-key", "--scope", "ingest")
    server = live_server(
        workers=1, LOG_FORMAT="json", LOG_LEVEL="info", GUNICORN_ACCESS_LOG="-", AUTH_MODE="all"
    )
    sent = send(
        server,
        "POST",
        f"/track?key={key}",
        {"event": SECRET_EVENT, "user_id": SECRET_USER},
        headers={"X-Request-Id": "req-1234.abc"},
    )
    assert sent.status == 200
    assert sent.headers["X-Request-Id"] == "req-1234.abc"
    made = send(
        server,
        "GET",
        f"/metrics?start_date=2025-01-01&end_date=2025-01-02&user_id={SECRET_USER}",
        headers={"X-Request-Id": "bad id!"},
    )
    assert made.status == 401
    generated = made.headers["X-Request-Id"]
    assert generated and generated != "bad id!"

    text = output_after(server, generated)
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "analytics.access"]
    assert [(a["request_id"], a["method"], a["path"], a["status"], a["key"]) for a in access] == [
        ("req-1234.abc", "POST", "/track", 200, "beacon-key"),
        (generated, "GET", "/metrics", 401, None),
    ]
    # Once, by the app: gunicorn's own access log is off with JSON logs.
    assert text.count("req-1234.abc") == 1
    for secret_text in (key, SECRET_USER, SECRET_EVENT):
        assert secret_text not in text, text


def test_openapi_servers_are_not_taken_from_the_request(make_app):
    document = (
        make_app()
        .test_client()
        .get("/openapi.json", headers={"Host": "attacker.example"})
        .get_json()
    )
    assert document["servers"] == [{"url": "/"}]
    configured = (
        make_app(PUBLIC_URL="https://analytics.example.com")
        .test_client()
        .get("/openapi.json", headers={"Host": "attacker.example"})
        .get_json()
    )
    assert configured["servers"] == [{"url": "https://analytics.example.com"}]
