"""Helpers shared by the test modules: plain functions and classes, no fixtures (those are in
conftest.py). Test modules import from here and never from one another.

- services: skip (or fail, when CI requires them) without PostgreSQL, Redis or a program;
- databases: migrations, scratch databases, what is stored, the aggregates against a rebuild;
- apps: keys, closing an app, and the requests and answers of the contract;
- processes: gunicorn and the ``flask`` command line as an operator runs them;
- browsers: pages watched for requests to other hosts, and a site on another origin.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from analytics import committer, db, migrations, ratelimits, writer
from analytics.ingest import metadata_size
from analytics.models import (
    BITMAP_BITS,
    ActivityLog,
    Base,
    Event,
    EventHour,
    PlayStopSession,
    SessionBucket,
    UserBitmap,
    UserOrdinal,
)

ROOT = Path(__file__).resolve().parent.parent
E2E_REQUIRED = os.environ.get("ANALYTICS_TEST_E2E", "").lower() == "required"


# --- services and programs -----------------------------------------------------------------------


def require_service(
    name: str, where: str, problem: str | None, required: bool, variable: str
) -> None:
    """Skip the test, with the reason, when a service the test needs is not reachable; fail
    instead when ``variable`` says the service is required (CI)."""
    if problem:
        message = f"{name} not reachable at {where} ({problem})"
        if required:
            pytest.fail(f"{message} and {variable}=required", pytrace=False)
        pytest.skip(message)


def require_tool(name: str, path: str | None = None, install: str = "") -> str:
    """The path of the program ``name`` (found on PATH, or at ``path``), or a skip; a failure
    instead when ANALYTICS_TEST_E2E=required (CI, after installing them)."""
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    found = (
        path
        if path and os.access(path, os.X_OK)
        else (None if path else shutil.which(name, path=search))
    )
    if found:
        return found
    message = f"{name} is not installed" + (f" ({install})" if install else "")
    if E2E_REQUIRED:
        pytest.fail(message + " and ANALYTICS_TEST_E2E=required", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable, timeout: float = 20.0, interval: float = 0.2):
    """Poll ``condition()`` until it returns something truthy; that value, or an
    AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {condition.__doc__ or condition}")
        time.sleep(interval)


# --- databases -----------------------------------------------------------------------------------


def alembic_config(url: str) -> AlembicConfig:
    """The configuration ``flask --app analytics migrate`` runs the package's migrations with."""
    return migrations.alembic_config(url)


def migrate(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def create_postgres_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """A new empty database on the server; returns its URL and a function that drops it."""
    name = f"analytics_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def empty_tables(url: str) -> None:
    """Delete every row of every table of the models (events and the aggregates)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


def unreachable_url(backend: str, tmp_path: Path) -> str:
    """A database URL of the backend that no database answers."""
    if backend == "sqlite":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the database's folder should be")
        return f"sqlite:///{blocker / 'analytics.db'}"
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/analytics"


def stored(engine) -> list[Event]:
    """Every stored event, in arrival order."""
    with Session(engine) as session:
        return list(session.scalars(select(Event).order_by(Event.id)))


def count_events(engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Event))


def aggregates(engine) -> tuple[dict, dict, set, dict]:
    """Event counts per bucket and name and session totals per bucket, summed over shards,
    without zero rows, the session rows (play id, stop id, duration), and the users active in
    each piece of the active-user bitmaps (span, bucket), without empty ones, once the pairs
    writers logged are folded into them."""
    writer.fold_activity(engine)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ActivityLog)) == 0
        users = dict(
            (o, u) for u, o in session.execute(select(UserOrdinal.user_id, UserOrdinal.ordinal))
        )
        active: dict = defaultdict(set)
        for row in session.execute(select(UserBitmap)).scalars():
            bits = format(int.from_bytes(row.bits, "big"), f"0{BITMAP_BITS}b")
            for bit in (i for i, b in enumerate(bits) if b == "1"):
                # A set bit of an ordinal no user holds would be counted: a KeyError.
                active[(row.span, row.bucket)].add(users[row.chunk * BITMAP_BITS + bit])
        counts: Counter = Counter()
        for row in session.execute(select(EventHour)).scalars():
            for quarter, n in enumerate((row.q0, row.q1, row.q2, row.q3)):
                counts[(row.bucket + quarter, row.event)] += n
        totals: dict = {}
        for row in session.execute(select(SessionBucket)).scalars():
            n, total = totals.get(row.bucket, (0, 0))
            totals[row.bucket] = (n + row.sessions, total + row.total_us)
        pairs = {
            (row.play_id, row.stop_id, row.duration_us)
            for row in session.execute(select(PlayStopSession)).scalars()
        }
    return (+counts, {k: v for k, v in totals.items() if v != (0, 0)}, pairs, dict(active))


def rebuilt(engine) -> tuple[dict, dict, set, dict]:
    writer.rebuild_aggregates(engine)
    return aggregates(engine)


def assert_exact(engine) -> tuple[dict, dict, set, dict]:
    """Assert that the aggregates kept by the write path are what a rebuild from the events
    gives; return them."""
    incremental = aggregates(engine)
    with Session(engine) as session:
        # Every user with an event has an ordinal, and no one else keeps one.
        assert set(session.scalars(select(UserOrdinal.user_id))) == set(
            session.scalars(select(Event.user_id).distinct())
        )
    assert incremental == rebuilt(engine)
    return incremental


# --- apps, requests and answers ------------------------------------------------------------------

SUCCESS = {"status": "success", "message": "Event logged."}
DUPLICATE = {**SUCCESS, "duplicate": True}
FUTURE_WARNING = "Future timestamp replaced with server time"
TRUNCATED_WARNING = "Metadata truncated due to size limit"
TOO_DEEP = "metadata is nested too deeply (at most 64 levels)"


def close_app(app) -> None:
    """Stop what an app started: its writer threads, its rate-limit storage (Redis
    connections, the memory store's timer) and its database connections."""
    app.extensions[committer.EXTENSION_KEY].close()
    app.extensions[ratelimits.EXTENSION_KEY].close()
    app.extensions[db.EXTENSION_KEY]["engine"].dispose()


def create_key(
    app, name: str, *scopes: str, origins: tuple[str, ...] = (), rate: str | None = None
) -> str:
    """``flask keys create`` on ``app``; the secret it printed on its last line."""
    args = ["keys", "create", name]
    args += [part for scope in scopes for part in ("--scope", scope)]
    args += [part for origin in origins for part in ("--origin", origin)]
    args += ["--rate", rate] if rate else []
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()[-1]


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def post(client, body, content_type="application/json", **kwargs):
    """POST /track with ``body`` (a dict, or the text or bytes to send as they are)."""
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/track", data=data, content_type=content_type, **kwargs)


def track(client, event: str, at: str, user_id: str = "u1") -> None:
    """POST /track one event at ``at``; assert it was logged."""
    response = client.post("/track", json={"event": event, "user_id": user_id, "timestamp": at})
    assert response.status_code == 200, response.get_data(as_text=True)


def track_event(client, **event) -> dict:
    """POST /track with these fields; assert it was logged and return the answer."""
    response = client.post("/track", json=event)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def get_data(client, query: str, path: str = "/metrics") -> list[dict]:
    """GET ``path?query``; assert success and return its ``data``."""
    response = client.get(f"{path}?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "success"
    return body["data"]


def assert_error(
    response, status: int, message: str | None = None, *, field: str | None = None
) -> dict:
    """Assert that ``response`` is the contract's error envelope with this status, this exact
    message when one is given, and ``field`` named in the message and in ``errors`` when one is
    given; return the body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "error"
    assert isinstance(body["message"], str) and body["message"]
    if message is not None:
        assert body["message"] == message
    if field is not None:
        assert field in body["message"]
        assert field in body["errors"]
    return body


def metadata_of_size(size: int, char: str = "x") -> dict:
    """Metadata whose size, as the limit measures it, is exactly ``size`` bytes."""
    base = metadata_size({"k": ""})
    width = len(char.encode("utf-8"))
    assert (size - base) % width == 0
    metadata = {"k": char * ((size - base) // width)}
    assert metadata_size(metadata) == size
    return metadata


def nested(levels: int) -> dict:
    """Metadata ``levels`` deep: the object itself is level 1, each object or array inside adds
    one (alternating, so both kinds count)."""
    value: object = "leaf"
    for level in range(levels - 1, 0, -1):
        value = {"k": value} if level % 2 else [value]
    return {"k": value}


# --- processes: gunicorn and the command line ----------------------------------------------------


def stop_process(process: subprocess.Popen | None) -> None:
    """Terminate a server started by a test, killing it if it does not stop in 15 s."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class LiveServer:
    """gunicorn serving wsgi:app from this checkout, in a subprocess."""

    def __init__(self, database_url: str, workers: int = 2, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": str(workers),
            "LOG_LEVEL": "warning",
            "GUNICORN_ACCESS_LOG": "off",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    def start(self, timeout: float = 30) -> LiveServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("gunicorn exited: " + self.output())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not start listening in time")

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()

    def workers(self) -> list[int]:
        """The process ids of this server's workers (the master's children)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # a process that ended meanwhile
                if int(fields[1]) == self.process.pid:
                    found.append(int(entry.name))
        return found

    def output(self) -> str:
        """What gunicorn has written so far (error log; the access log is off)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def run_flask(
    database_url: str, *args: str, text: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    """``flask --app wsgi ...`` as an operator runs it, from the project root."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=text,
        timeout=120,
        **kwargs,
    )


def create_key_with_flask(database_url: str, name: str, *options: str) -> str:
    """``flask keys create`` in a subprocess, for a server the test does not hold in-process;
    the secret it printed."""
    done = run_flask(database_url, "keys", "create", name, *options)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


def run_in_terminal(args: list[str], database_url: str, timeout: float = 120) -> str:
    """Run ``flask --app wsgi <args>`` with a pseudo-terminal as stdout and stderr (so that it
    shows what an operator at a terminal sees) and return what it printed; assert exit 0."""
    import pty

    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", *args],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url},
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=terminal,
        )
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closes when the process exits
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=timeout) == 0, output
    finally:
        os.close(controller)
    return output.decode()


# --- browsers ------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@dataclass
class Watched:
    """A page whose requests to other hosts are blocked and recorded, with its console errors."""

    page: object
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.blocked == [], "requests to other hosts"
        assert self.errors == [], "console errors"


def watched_page(browser, **context_options) -> Watched:
    """A page in a new context (en-US, a phone or desktop viewport as given) that fails no
    request itself but aborts and records every request to a host other than this machine."""
    context = browser.new_context(locale="en-US", **context_options)
    watched = Watched(context.new_page())

    def route(route):
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            watched.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", route)

    def on_console(message):
        # The browser's own report of an HTTP status (a 401 asking for a key, a 404 for an
        # endpoint this server lacks) is an answer the page handles, not an error of the page.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            watched.errors.append(message.text)

    watched.page.on("console", on_console)
    watched.page.on("pageerror", lambda error: watched.errors.append(str(error)))
    return watched


class StaticSite:
    """Another origin (http://localhost:<its port>) serving one HTML page, in a thread."""

    def __init__(self, html: str = ""):
        self.html = html  # what the page is; may be changed while the site runs
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = site.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sessions_lock_key(user_id: str) -> int:
    """The PostgreSQL advisory-lock key that a write of a play by ``user_id`` waits for: held
    by a test, it stalls that user's writes alone."""
    from datetime import UTC, datetime

    from analytics.aggregates.sessions import Sessions
    from analytics.dialects.postgresql import advisory_key
    from analytics.rows import StoredEvent

    [lock] = Sessions().locks([StoredEvent(datetime.now(UTC), 1, "play", user_id)], False)
    return advisory_key(lock)
