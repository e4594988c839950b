"""Rules every endpoint shares: JSON errors, 404/405, CORS, NUL in query strings, 500s."""

from __future__ import annotations

import pytest

from tests.helpers import assert_error, count_events


def test_unknown_path_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "error", "message": "Not found"}
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("get", "/track", {"POST", "OPTIONS"}),
        ("put", "/track", {"POST", "OPTIONS"}),
        ("delete", "/health", {"GET", "HEAD", "OPTIONS"}),
        ("post", "/health", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_wrong_method_is_json_405_with_allow(client, method, path, allowed):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "error", "message": "Method not allowed"}
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("path", ["/track", "/health", "/openapi.json"])
def test_preflight_is_answered_on_every_endpoint(client, path):
    response = client.options(
        path,
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code in (200, 204)
    if path == "/track":  # ingest echoes the origin, so that credentialed requests pass
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in response.headers["Vary"]
    else:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "OPTIONS"} <= methods
    headers = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"content-type", "authorization"} <= headers


def test_preflight_without_request_headers_still_lists_allowed_headers(client):
    response = client.options("/track")
    assert response.status_code in (200, 204)
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]


def test_options_on_unknown_path_is_404(client):
    assert_error(client.options("/nope"), 404, "Not found")


def test_cors_on_success_and_client_errors(client, engine):
    ok = client.post("/track", json={"event": "e", "user_id": "u"})
    bad = client.post("/track", json={"event": "e"})
    unsupported = client.post("/track", data="x", content_type="text/html")
    for response in (ok, bad, unsupported):
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert (ok.status_code, bad.status_code, unsupported.status_code) == (200, 400, 415)
    assert count_events(engine) == 1


@pytest.mark.parametrize("query", ["a=%00", "x%00y=1", "user_id=ab%00c"])
def test_nul_in_query_string_is_400(client, query):
    assert "NUL" in assert_error(client.get(f"/health?{query}"), 400)["message"]


def test_unexpected_error_is_json_500_without_internals(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internal detail /srv/app/analytics/x.py")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "error", "message": "Internal server error"}
    assert b"secret" not in response.data and b"Traceback" not in response.data
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_database_bug_is_500_with_endpoint_message(app, client, engine, monkeypatch):
    from sqlalchemy.exc import ProgrammingError

    import analytics.committer as committer

    def broken_insert(session, rows):
        raise ProgrammingError("INSERT INTO events ...", {}, Exception("syntax error at or near"))

    monkeypatch.setattr(committer, "store_events", broken_insert)
    response = client.post("/track", json={"event": "e", "user_id": "u"})
    assert response.status_code == 500
    assert response.get_json() == {"status": "error", "message": "Failed to log event"}
    assert b"INSERT" not in response.data and b"syntax" not in response.data
    # The worker keeps serving.
    monkeypatch.undo()
    assert client.post("/track", json={"event": "e", "user_id": "u"}).status_code == 200
    assert count_events(engine) == 1


def test_health_is_ok_when_database_answers(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/track", "/track/batch"])
def test_ingest_echoes_the_origin_on_answers_and_errors(client, path):
    origin = {"Origin": "https://app.example.com"}
    body = (
        {"event": "e", "user_id": "u"}
        if path == "/track"
        else {"events": [{"event": "e", "user_id": "u"}]}
    )
    for response in (
        client.post(path, json=body, headers=origin),
        client.post(path, json={}, headers=origin),
    ):
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in response.headers["Vary"]
    without = client.post(path, json=body)
    assert without.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in without.headers


def test_reads_keep_the_wildcard_origin(client):
    response = client.get(
        "/metrics?start_date=2025-01-01&end_date=2025-01-02",
        headers={"Origin": "https://app.example.com"},
    )
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
