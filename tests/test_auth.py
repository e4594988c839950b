"""Access keys on requests: what each AUTH_MODE needs, the refusals' exact answers, scopes,
origins, the ``key`` query parameter, and the per-process key cache."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from analytics import auth
from analytics.models import AccessKey, EventHour
from tests.helpers import (
    assert_error,
    bearer,
    close_app,
    count_events,
    create_key,
    create_key_with_flask,
    run_flask,
)

METRICS = "/metrics?start_date=2025-01-01&end_date=2025-01-31"
SESSIONS = "/sessions?start_date=2025-01-01&end_date=2025-01-31"
EVENT = {"event": "play", "user_id": "u1", "timestamp": "2025-01-02T10:00:00Z"}
BATCH = {"events": [EVENT, {**EVENT, "event": "stop"}]}


def track(client, headers=None, path="/track"):
    return client.post(path, json=BATCH if path == "/track/batch" else EVENT, headers=headers or {})


def assert_refused(response, status: int, message: str) -> None:
    """The contract's refusal: the status, exactly this envelope, the challenge on a 401 and
    the CORS header."""
    assert assert_error(response, status, message) == {"status": "error", "message": message}
    origin = response.request.headers.get("Origin")
    ingest = response.request.path in ("/track", "/track/batch")
    assert response.headers["Access-Control-Allow-Origin"] == (
        origin if origin and ingest else "*"
    )  # ingest echoes the Origin
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


# --- What each mode needs ---------------------------------------------------------------------


def test_open_mode_needs_no_key(make_app, engine):
    client = make_app(AUTH_MODE="open").test_client()
    assert track(client).status_code == 200
    assert track(client, path="/track/batch").status_code == 200
    assert count_events(engine) == 3
    assert client.get(METRICS).get_json()["data"] == [{"date": "2025-01-02", "play": 2, "stop": 1}]
    assert client.get(SESSIONS).status_code == 200


def test_reads_mode_needs_a_key_for_reads_only(make_app, engine):
    client = make_app(AUTH_MODE="reads").test_client()
    assert track(client).status_code == 200
    assert track(client, path="/track/batch").status_code == 200
    assert count_events(engine) == 3
    assert_refused(client.get(METRICS), 401, "API key required")
    assert_refused(client.get(SESSIONS), 401, "API key required")
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_all_mode_needs_a_key_for_everything_but_health_and_the_document(make_app, engine):
    client = make_app(AUTH_MODE="all").test_client()
    assert_refused(track(client), 401, "API key required")
    assert_refused(track(client, path="/track/batch"), 401, "API key required")
    assert_refused(client.get(METRICS), 401, "API key required")
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert count_events(engine) == 0


def test_the_keyed_requests_are_answered_as_without_keys(make_app):
    app = make_app(AUTH_MODE="all")
    secret = create_key(app, "admin", "admin")
    client = app.test_client()
    assert track(client, bearer(secret)).get_json() == {
        "status": "success",
        "message": "Event logged.",
    }
    assert track(client, bearer(secret), "/track/batch").get_json()["accepted"] == 2
    assert client.get(METRICS, headers=bearer(secret)).get_json() == {
        "status": "success",
        "data": [{"date": "2025-01-02", "play": 2, "stop": 1}],
    }


@pytest.mark.parametrize("path", ["/track", "/track/batch", "/metrics", "/sessions", "/health"])
def test_preflights_never_need_a_key(make_app, path):
    client = make_app(AUTH_MODE="all").test_client()
    response = client.options(
        path,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 204
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


def test_unknown_paths_stay_404(make_app):
    client = make_app(AUTH_MODE="all").test_client()
    assert_error(client.get("/nothing-here"), 404, "Not found")


# --- Keys presented ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["open", "reads", "all"])
def test_a_key_in_the_header_is_checked_in_every_mode(make_app, engine, mode):
    app = make_app(AUTH_MODE=mode)
    create_key(app, "real", "admin")
    client = app.test_client()
    wrong = "ak_" + "0" * 40
    assert_refused(client.get(METRICS, headers=bearer(wrong)), 401, "Invalid API key")
    assert_refused(track(client, bearer(wrong)), 401, "Invalid API key")
    assert_refused(track(client, bearer("")), 401, "Invalid API key")
    assert count_events(engine) == 0


def test_a_revoked_key_is_refused(make_app, engine):
    app = make_app(AUTH_MODE="reads")
    secret = create_key(app, "gone", "read", "ingest")
    result = app.test_cli_runner().invoke(args=["keys", "revoke", "gone"])
    assert result.exit_code == 0, result.output
    client = app.test_client()
    assert_refused(client.get(METRICS, headers=bearer(secret)), 401, "Invalid API key")
    assert_refused(track(client, bearer(secret)), 401, "Invalid API key")
    assert count_events(engine) == 0


@pytest.mark.parametrize("mode", ["open", "reads", "all"])
def test_scopes(make_app, engine, mode):
    app = make_app(AUTH_MODE=mode)
    ingest = create_key(app, "ingest", "ingest")
    read = create_key(app, "read", "read")
    both = create_key(app, "both", "ingest", "read")
    admin = create_key(app, "admin", "admin")
    client = app.test_client()

    assert track(client, bearer(ingest)).status_code == 200
    assert track(client, bearer(ingest), "/track/batch").status_code == 200
    assert_refused(
        client.get(METRICS, headers=bearer(ingest)), 403, "This API key does not allow read"
    )
    assert_refused(
        client.get(SESSIONS, headers=bearer(ingest)), 403, "This API key does not allow read"
    )

    assert client.get(METRICS, headers=bearer(read)).status_code == 200
    assert client.get(SESSIONS, headers=bearer(read)).status_code == 200
    assert_refused(track(client, bearer(read)), 403, "This API key does not allow ingest")
    assert_refused(
        track(client, bearer(read), "/track/batch"), 403, "This API key does not allow ingest"
    )

    for secret in (both, admin):
        assert track(client, bearer(secret)).status_code == 200
        assert client.get(METRICS, headers=bearer(secret)).status_code == 200
    assert count_events(engine) == 5  # ingest's event and batch, then one each of both, admin


def test_paths_without_a_scope_of_their_own_need_admin():
    assert auth.scope_for("/users/<path:user_id>") == "admin"
    assert auth.scope_for("/users/<path:user_id>/events") == "admin"
    assert auth.scope_for("/events") == "read"
    assert auth.scope_for("/active-users") == "read"
    assert auth.scope_for("/health") is None


def test_every_route_has_its_scope(app):
    """A new endpoint must be given its scope in auth.PATH_SCOPES (or be left to admin on
    purpose, which this test then has to list)."""
    routes = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert routes <= set(auth.PATH_SCOPES)


def test_other_authorization_schemes_are_not_keys(make_app, engine):
    client = make_app(AUTH_MODE="reads").test_client()
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}  # e.g. from a password-protected proxy
    assert track(client, basic).status_code == 200
    assert count_events(engine) == 1
    assert_refused(client.get(METRICS, headers=basic), 401, "API key required")
    assert (
        client.get(
            METRICS,
            headers={"Authorization": "bearer " + create_key(client.application, "lower", "read")},
        ).status_code
        == 200
    )


# --- The key query parameter ------------------------------------------------------------------


def test_ingest_takes_the_key_from_the_query_string(make_app, engine):
    app = make_app(AUTH_MODE="all")
    secret = create_key(app, "beacon", "ingest")
    client = app.test_client()
    # What navigator.sendBeacon sends: a text/plain body, no headers of its own.
    response = client.post(
        f"/track?key={secret}",
        data='{"event": "play", "user_id": "b"}',
        content_type="text/plain;charset=UTF-8",
    )
    assert response.status_code == 200, response.get_json()
    assert client.post(f"/track/batch?key={secret}", json=BATCH).status_code == 200
    assert_refused(client.post("/track?key=ak_nope", json=EVENT), 401, "Invalid API key")
    assert count_events(engine) == 3


def test_no_other_scope_is_taken_from_the_query_string(make_app):
    app = make_app(AUTH_MODE="reads")
    secret = create_key(app, "reader", "read", "ingest")
    client = app.test_client()
    assert_refused(client.get(f"{METRICS}&key={secret}"), 401, "API key required")
    assert_refused(client.get(f"{METRICS}&key=ak_nope"), 401, "API key required")
    open_client = make_app(AUTH_MODE="open").test_client()
    assert open_client.get(f"{METRICS}&key=ak_nope").status_code == 200


# --- Origins ----------------------------------------------------------------------------------


def test_origin_bound_keys(make_app, engine):
    app = make_app(AUTH_MODE="all")
    secret = create_key(
        app, "site", "ingest", origins=("https://shop.example", "http://localhost:3000")
    )
    client = app.test_client()

    def send(origin=None, via_query=False):
        headers = {"Origin": origin} if origin else {}
        if via_query:
            return client.post(f"/track?key={secret}", json=EVENT, headers=headers)
        return track(client, {**headers, **bearer(secret)})

    assert send("https://shop.example").status_code == 200
    assert send("HTTPS://Shop.Example").status_code == 200  # origins are case-insensitive
    assert send("http://localhost:3000", via_query=True).status_code == 200
    assert send().status_code == 200  # not a browser: nothing to bind
    assert_refused(send("https://evil.example"), 403, "Origin not allowed for this API key")
    assert_refused(
        send("https://shop.example:8443", via_query=True),
        403,
        "Origin not allowed for this API key",
    )
    assert_refused(send("http://shop.example"), 403, "Origin not allowed for this API key")
    assert count_events(engine) == 4


# --- A refused request stores nothing and reveals nothing -------------------------------------


def test_refused_requests_store_nothing(make_app, engine):
    app = make_app(AUTH_MODE="all")
    read = create_key(app, "read", "read")
    bound = create_key(app, "bound", "ingest", origins=("https://a.example",))
    client = app.test_client()
    for path in ("/track", "/track/batch"):
        assert track(client, path=path).status_code == 401
        assert track(client, bearer("ak_wrong"), path).status_code == 401
        assert track(client, bearer(read), path).status_code == 403
        assert (
            track(client, {**bearer(bound), "Origin": "https://b.example"}, path).status_code == 403
        )
    assert count_events(engine) == 0
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(EventHour)) == 0


def test_a_refused_read_reveals_nothing(make_app):
    app = make_app(AUTH_MODE="reads")
    ingest = create_key(app, "ingest", "ingest")
    reader = create_key(app, "reader", "read")
    client = app.test_client()
    assert track(client, bearer(ingest)).status_code == 200
    # There is something to reveal: a key that may read sees it.
    assert "play" in client.get(f"{METRICS}&user_id=u1", headers=bearer(reader)).get_data(
        as_text=True
    )
    for headers in ({}, bearer("ak_wrong"), bearer(ingest)):
        response = client.get(f"{METRICS}&user_id=u1", headers=headers)
        assert set(response.get_json()) == {"status", "message"}
        assert "play" not in response.get_data(as_text=True)


# --- Storage ----------------------------------------------------------------------------------


def test_keys_survive_a_restart(make_app):
    first = make_app(AUTH_MODE="reads")
    secret = create_key(first, "lasting", "read")
    close_app(first)
    restarted = make_app(AUTH_MODE="reads")
    assert restarted.test_client().get(METRICS, headers=bearer(secret)).status_code == 200


def test_no_column_holds_the_secret(make_app, engine):
    app = make_app(AUTH_MODE="reads")
    secret = create_key(
        app, "hidden", "read", "ingest", origins=("https://a.example",), rate="10/second"
    )
    assert secret.startswith("ak_") and len(secret) >= 22
    assert app.test_client().get(METRICS, headers=bearer(secret)).status_code == 200
    with engine.connect() as conn:
        [row] = conn.execute(text("SELECT * FROM keys")).mappings().all()
    values = [str(value) for value in row.values() if value is not None]
    random_part = secret.removeprefix("ak_")
    for value in values:
        for start in range(0, len(random_part) - 8):
            # No eight characters of the secret's random part appear anywhere.
            assert random_part[start : start + 8] not in value
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()


# --- The per-process cache --------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key_statements(app) -> list[str]:
    """Every statement the app's engine sends that reads or writes the keys table, from now."""
    seen: list[str] = []

    @event.listens_for(app.extensions["analytics.db"]["engine"], "before_cursor_execute")
    def _record(_conn, _cursor, statement, *_args):
        if "keys" in statement:
            seen.append(statement.split()[0].upper())

    return seen


def test_a_seen_key_costs_no_query(make_app):
    app = make_app(AUTH_MODE="reads")
    secret = create_key(app, "cached", "read")
    statements = key_statements(app)
    client = app.test_client()
    for _ in range(20):
        assert client.get(METRICS, headers=bearer(secret)).status_code == 200
    # One look-up, and the first use's last-use time.
    assert statements == ["SELECT", "UPDATE"]


def test_a_revocation_is_seen_once_the_cache_expires(make_app):
    app = make_app(AUTH_MODE="reads")
    clock = Clock()
    auth.keyring(app).clock = clock
    secret = create_key(app, "soon-gone", "read")
    client = app.test_client()
    assert client.get(METRICS, headers=bearer(secret)).status_code == 200
    assert app.test_cli_runner().invoke(args=["keys", "revoke", "soon-gone"]).exit_code == 0

    clock.now += auth.CACHE_SECONDS / 2
    assert client.get(METRICS, headers=bearer(secret)).status_code == 200  # still cached
    clock.now += auth.CACHE_SECONDS
    assert_refused(client.get(METRICS, headers=bearer(secret)), 401, "Invalid API key")
    assert auth.CACHE_SECONDS < 5  # the contract's bound


def test_a_new_key_works_at_once(make_app):
    app = make_app(AUTH_MODE="reads")
    client = app.test_client()
    assert client.get(METRICS, headers=bearer(create_key(app, "old", "read"))).status_code == 200
    assert client.get(METRICS, headers=bearer(create_key(app, "new", "read"))).status_code == 200


def last_used(engine, name: str):
    with Session(engine) as session:
        return session.scalar(select(AccessKey.last_used_at).where(AccessKey.name == name))


def test_last_use_is_written_at_most_once_a_minute(make_app, engine):
    app = make_app(AUTH_MODE="reads")
    clock = Clock()
    auth.keyring(app).clock = clock
    secret = create_key(app, "busy", "read")
    assert last_used(engine, "busy") is None
    statements = key_statements(app)
    client = app.test_client()

    assert client.get(METRICS, headers=bearer(secret)).status_code == 200
    first = last_used(engine, "busy")
    assert first is not None
    for _ in range(10):
        clock.now += 5
        assert client.get(METRICS, headers=bearer(secret)).status_code == 200
    assert statements.count("UPDATE") == 1
    clock.now += auth.LAST_USE_INTERVAL.total_seconds()
    assert client.get(METRICS, headers=bearer(secret)).status_code == 200
    assert statements.count("UPDATE") == 2

    # Another process using the key within the minute of a write does not write it again.
    written = last_used(engine, "busy")
    other = make_app(AUTH_MODE="reads")
    assert other.test_client().get(METRICS, headers=bearer(secret)).status_code == 200
    assert last_used(engine, "busy") == written


def test_a_failed_refusal_never_writes_last_use(make_app, engine):
    app = make_app(AUTH_MODE="reads")
    secret = create_key(app, "ingest-only", "ingest")
    assert app.test_client().get(METRICS, headers=bearer(secret)).status_code == 403
    assert last_used(engine, "ingest-only") is None


# --- Every worker -----------------------------------------------------------------------------


@pytest.mark.live
def test_keys_reach_every_worker(live_server, database_url):
    """A new key works at once on every gunicorn worker; a revoked one is refused by all of
    them within the contract's five seconds."""
    import http.client
    import time

    server = live_server(workers=2, AUTH_MODE="reads")

    def statuses(secret: str, count: int = 40) -> set[int]:
        found = set()
        for _ in range(count):  # a connection each, spread over the workers by the kernel
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            connection.request("GET", METRICS, headers=bearer(secret))
            found.add(connection.getresponse().status)
            connection.close()
        return found

    secret = create_key_with_flask(database_url, "live", "--scope", "read")
    assert statuses(secret) == {200}

    assert run_flask(database_url, "keys", "revoke", "live").returncode == 0
    revoked_at = time.monotonic()
    while statuses(secret, 10) != {401}:
        assert time.monotonic() - revoked_at < 5
    assert statuses(secret) == {401}
