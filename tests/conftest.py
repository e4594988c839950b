"""Fixtures: every test that uses ``app`` runs once on SQLite and once on PostgreSQL.

PostgreSQL is found at TEST_POSTGRES_URL (default: the local server, database ``test``). When it
cannot be reached, its half of the suite is skipped with a reason, unless
ANALYTICS_TEST_POSTGRES=required, which turns that into a failure (CI sets it).

Redis, for the rate limits shared between processes, is found at TEST_REDIS_URL (default the
local server); the same rule applies with ANALYTICS_TEST_REDIS=required.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from analytics import create_app, migrations
from analytics.models import Base

# The browser fixture, for the tests that drive Chromium.
pytest_plugins = ["tests.browser"]

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_REQUIRED = os.environ.get("ANALYTICS_TEST_POSTGRES", "").lower() == "required"
BACKENDS = ("sqlite", "postgresql")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_REQUIRED = os.environ.get("ANALYTICS_TEST_REDIS", "").lower() == "required"


def alembic_config(url: str) -> AlembicConfig:
    """The configuration ``flask --app analytics migrate`` runs the package's migrations with."""
    return migrations.alembic_config(url)


def migrate(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'analytics.db'}"
    migrate(url)
    return url


def _postgres_unreachable(url: str) -> str | None:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect means "not here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@pytest.fixture(scope="session")
def postgres_server_url():
    """The URL of the PostgreSQL server's maintenance database, or a skip."""
    require_service(
        "PostgreSQL",
        make_url(PG_URL).render_as_string(),
        _postgres_unreachable(PG_URL),
        PG_REQUIRED,
        "ANALYTICS_TEST_POSTGRES",
    )
    return PG_URL


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


def create_postgres_database(server_url: str) -> tuple[str, callable]:
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


@pytest.fixture(scope="session")
def postgresql_url(postgres_server_url):
    url, drop = create_postgres_database(postgres_server_url)
    migrate(url)
    yield url
    drop()


def empty_tables(url: str) -> None:
    """Delete every row of every table of the models (events and the aggregates)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(request, backend) -> str:
    """A migrated database of the current backend, emptied after the test."""
    url = request.getfixturevalue(f"{backend}_url")
    yield url
    empty_tables(url)


@pytest.fixture
def app(database_url):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url})
    yield app
    app.extensions["analytics.db"]["engine"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_app(database_url):
    """``make_app(AUTH_MODE="all", ...)``: an app on the test database with these settings.
    Each has its own rate-limit counts, in Redis too (a prefix of its own)."""
    apps = []

    def make(**config):
        config.setdefault("RATE_LIMIT_KEY_PREFIX", f"test-{uuid.uuid4().hex[:12]}")
        app = create_app({"TESTING": True, "DATABASE_URL": database_url, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["analytics.db"]["engine"].dispose()


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


def _redis_unreachable(url: str) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # any failure to connect means "not here"
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def redis_url():
    """The URL of a Redis server for the shared rate limits, or a skip."""
    require_service(
        "Redis", REDIS_URL, _redis_unreachable(REDIS_URL), REDIS_REQUIRED, "ANALYTICS_TEST_REDIS"
    )
    return REDIS_URL


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def engine(database_url):
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture
def live_server(database_url):
    """Start gunicorn on the test database: ``live_server(workers=4)``; stopped afterwards."""
    servers: list[LiveServer] = []

    def start(workers: int = 2, **env) -> LiveServer:
        server = LiveServer(database_url, workers=workers, env=env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


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


def stop_process(process: subprocess.Popen | None) -> None:
    """Terminate a server started by a test, killing it if it does not stop in 15 s."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def unreachable_url(backend: str, tmp_path) -> str:
    """A database URL of the backend that no database answers."""
    if backend == "sqlite":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the database's folder should be")
        return f"sqlite:///{blocker / 'analytics.db'}"
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/analytics"
