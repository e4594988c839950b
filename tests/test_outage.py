"""A database that goes away and comes back: 503 with Retry-After, then recovery without restart."""

from __future__ import annotations

import socket
import threading

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from analytics.errors import is_unreachable
from tests.helpers import assert_error, count_events, migrate, unreachable_url


class SwitchableProxy:
    """A TCP proxy on loopback that forwards to a server, or drops every connection when off."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.enabled = True
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.enabled:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self):
        """The database "goes down": existing connections die, new ones are refused."""
        self.enabled = False
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                except OSError:
                    pass
            self.connections.clear()

    def restore(self):
        self.enabled = True

    def close(self):
        self.cut()
        self.listener.close()


def assert_unavailable(response, message):
    """The contract's 503: the message, a Retry-After and the CORS header."""
    assert assert_error(response, 503, message) == {"status": "error", "message": message}
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["Access-Control-Allow-Origin"] == "*"


EVENT = {"event": "play", "user_id": "u"}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgres_outage_and_recovery(app_factory, database_url, engine):
    url = make_url(database_url)
    proxy = SwitchableProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    client = app_factory(proxied, DB_CONNECT_TIMEOUT=2).test_client()
    try:
        assert client.post("/track", json=EVENT).status_code == 200

        proxy.cut()
        assert_unavailable(client.post("/track", json=EVENT), "Failed to log event")
        assert_unavailable(client.get("/health"), "Database unavailable")

        proxy.restore()
        assert client.get("/health").status_code == 200
        assert client.post("/track", json=EVENT).status_code == 200
    finally:
        proxy.close()
    # Exactly the two accepted events were stored; the refused one left nothing behind.
    assert count_events(engine) == 2


def test_sqlite_outage_and_recovery(app_factory, tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the database folder should be")
    url = f"sqlite:///{blocker / 'analytics.db'}"
    client = app_factory(url).test_client()

    assert_unavailable(client.post("/track", json=EVENT), "Failed to log event")
    assert_unavailable(client.get("/health"), "Database unavailable")

    blocker.unlink()
    blocker.mkdir()
    migrate(url)
    assert client.get("/health").status_code == 200
    assert client.post("/track", json=EVENT).status_code == 200
    # The event of the 200 is stored, the refused one is not.
    engine = create_engine(url)
    try:
        assert count_events(engine) == 1
    finally:
        engine.dispose()


def test_unreachable_database_never_leaks_details(app_factory):
    url = "postgresql+psycopg://nobody:s3cret@127.0.0.1:1/none"
    app = app_factory(url, DB_CONNECT_TIMEOUT=1)
    response = app.test_client().post("/track", json=EVENT)
    assert_unavailable(response, "Failed to log event")
    assert b"s3cret" not in response.data and b"127.0.0.1" not in response.data


# --- what counts as an outage ---------------------------------------------------------------


def driver_error(url: str, *statements: str) -> DBAPIError:
    """What SQLAlchemy raises when connecting to ``url`` and running ``statements``."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    except DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    pytest.fail(f"{statements} ran without an error")


def test_a_statement_the_database_refuses_is_not_an_outage(backend, database_url):
    """The drivers raise OperationalError for some statements a live database refuses: a
    missing table or bad SQL on SQLite, an object in the wrong state on PostgreSQL."""
    refused = [["SELECT * FROM no_such_table"], ["SELEC 1"]]
    if backend == "postgresql":
        refused.append(["CREATE TEMPORARY SEQUENCE s", "SELECT currval('s')"])  # 55000
    for statements in refused:
        exc = driver_error(database_url, *statements)
        assert not is_unreachable(exc), (statements, repr(exc.orig))


def test_a_database_out_of_reach_is_unreachable(backend, tmp_path):
    assert is_unreachable(driver_error(unreachable_url(backend, tmp_path), "SELECT 1"))


def test_a_database_without_tables_is_an_error_not_an_outage(app_factory, scratch_database):
    """No Retry-After for a database nobody migrated (waiting will not fix it), alike on both
    databases."""
    app = app_factory(scratch_database)
    response = app.test_client().get("/metrics?start_date=2025-01-01&end_date=2025-01-01")
    assert response.status_code == 500, response.get_data(as_text=True)
    assert response.get_json() == {"status": "error", "message": "Failed to fetch metrics"}
    assert "Retry-After" not in response.headers
