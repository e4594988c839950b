"""Fixtures: every test that uses ``app`` runs once on SQLite and once on PostgreSQL.

PostgreSQL is found at TEST_POSTGRES_URL (default: the local server, database ``test``). When it
cannot be reached, its half of the suite is skipped with a reason, unless
ANALYTICS_TEST_POSTGRES=required, which turns that into a failure (CI sets it).
ANALYTICS_TEST_BACKENDS (default ``sqlite,postgresql``) narrows the backends a run covers:
``sqlite`` alone skips every test that needs PostgreSQL (``make test-fast``).

Redis, for the rate limits shared between processes, is found at TEST_REDIS_URL (default the
local server); the same rule applies with ANALYTICS_TEST_REDIS=required.

Every app a test makes comes from ``app_factory`` (or ``make_app``, ``app``), which closes it
afterwards: its writer thread, its rate-limit storage and its connections. A test that leaves a
writer thread running fails at teardown.
"""

from __future__ import annotations

import os
import threading
import uuid

import pytest

# The helpers' asserts explain themselves like the tests' own.
pytest.register_assert_rewrite("tests.helpers", "tests.tour")

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from analytics import create_app  # noqa: E402
from tests.helpers import (  # noqa: E402
    CHROMIUM,
    E2E_REQUIRED,
    LiveServer,
    close_app,
    create_postgres_database,
    empty_tables,
    migrate,
    require_service,
    require_tool,
)

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_REQUIRED = os.environ.get("ANALYTICS_TEST_POSTGRES", "").lower() == "required"
ALL_BACKENDS = ("sqlite", "postgresql")
BACKENDS = tuple(
    name.strip()
    for name in os.environ.get("ANALYTICS_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",")
    if name.strip()
)
if not BACKENDS or set(BACKENDS) - set(ALL_BACKENDS):
    raise pytest.UsageError(
        f"ANALYTICS_TEST_BACKENDS must list some of {', '.join(ALL_BACKENDS)}, not {BACKENDS}"
    )
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_REQUIRED = os.environ.get("ANALYTICS_TEST_REDIS", "").lower() == "required"


# --- databases -----------------------------------------------------------------------------------


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
    if "postgresql" not in BACKENDS:
        pytest.skip("PostgreSQL is not among ANALYTICS_TEST_BACKENDS")
    require_service(
        "PostgreSQL",
        make_url(PG_URL).render_as_string(),
        _postgres_unreachable(PG_URL),
        PG_REQUIRED,
        "ANALYTICS_TEST_POSTGRES",
    )
    return PG_URL


@pytest.fixture(scope="session")
def postgresql_url(postgres_server_url):
    url, drop = create_postgres_database(postgres_server_url)
    migrate(url)
    yield url
    drop()


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
def scratch_database(request, backend, tmp_path) -> str:
    """Another database of the current backend, empty and not migrated, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    url, drop = create_postgres_database(request.getfixturevalue("postgres_server_url"))
    yield url
    drop()


@pytest.fixture
def engine(database_url):
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


# --- apps ----------------------------------------------------------------------------------------


@pytest.fixture
def app_factory():
    """``app_factory(database_url, AUTH_MODE="all", ...)``: an app on that database with these
    settings, closed after the test. Each has its own rate-limit counts, in Redis too (a prefix
    of its own)."""
    apps = []

    def make(database_url: str, **config):
        config.setdefault("RATE_LIMIT_KEY_PREFIX", f"test-{uuid.uuid4().hex[:12]}")
        app = create_app({"TESTING": True, "DATABASE_URL": database_url, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        close_app(app)


@pytest.fixture
def make_app(app_factory, database_url):
    """``make_app(AUTH_MODE="all", ...)``: an app on the test database with these settings."""
    return lambda **config: app_factory(database_url, **config)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture(autouse=True)
def no_writer_thread_left():
    """Fail the test that leaves a writer thread running: an app made without the fixtures
    above, which nothing closes."""
    before = set(threading.enumerate())
    yield
    left = [
        thread
        for thread in threading.enumerate()
        if thread.name == "track-writer" and thread not in before
    ]
    assert left == [], "a writer thread outlived its test (make apps with app_factory)"


# --- services ------------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def browser():
    """One Chromium (Debian's, driven by Playwright; never Playwright's own download) for the
    module's tests; each test opens its own context or page."""
    require_tool("chromium", CHROMIUM, install="apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if E2E_REQUIRED:
            pytest.fail(
                "playwright is not installed and ANALYTICS_TEST_E2E=required", pytrace=False
            )
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()
