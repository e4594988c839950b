"""Database access: one engine per application, one Session per application context."""
from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

from flask import Flask, current_app, g
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

EXTENSION_KEY = "analytics.db"


def make_engine(url: str, *, pool_size: int = 5, pool_timeout: int = 10,
                connect_timeout: int = 5, statement_timeout_ms: int = 30000) -> Engine:
    """An engine tuned for this service on SQLite or PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, connect_timeout)
    connect_args = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = connect_timeout
        # JIT compilation of the /metrics and /sessions aggregates costs more than it saves
        # (0.1 to 0.8 s a query at 1M events; see docs/benchmarks.md).
        options = ["-c jit=off"]
        if statement_timeout_ms:
            options.append(f"-c statement_timeout={statement_timeout_ms}")
        connect_args["options"] = " ".join(options)
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        # A connection killed by a database restart is replaced instead of failing a request.
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def _sqlite_engine(url, busy_timeout_s: int) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # reported as an unreachable database on first use
    engine = create_engine(url, connect_args={"timeout": max(busy_timeout_s, 30)})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy emit BEGIN itself (the driver's implicit transactions are unreliable)
        # and let several gunicorn workers write at once: WAL lets readers run beside the writer,
        # the busy timeout makes a writer wait for the lock instead of failing.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={max(busy_timeout_s, 30) * 1000}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        mode = connection.get_execution_options().get("sqlite_begin", "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())

    return engine


@contextlib.contextmanager
def writer_turn(engine: Engine) -> Iterator[None]:
    """On a SQLite file, wait in line for the database's write lock; elsewhere, nothing.

    SQLite lets one writer in at a time, and a writer that finds the lock taken does not queue
    for it: it polls, sleeping 1, 2, 5, ... up to 100 ms between tries, so under steady writes
    some wait far longer than the writes before them took, and a purge deleting batch after
    batch can keep them out until it ends. Every writer of this application (events, batches,
    imports, purges) first takes an exclusive lock on a file beside the database, on which the
    operating system wakes a waiter as soon as it is released, and only then begins.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    handle = _lock_file(f"{database}-writer.lock")
    if handle is None:  # no such folder, not writable: the database itself will say so
        yield
        return
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


_open_lock_files = threading.local()


def _lock_file(path: str):
    """This thread's open lock file at ``path``, or None when it cannot be opened.

    One open file per thread: flock locks belong to an open file, so threads of one process
    exclude each other too; kept open, because opening it costs more than the lock.
    """
    files = _open_lock_files.__dict__
    if path not in files:
        try:
            files[path] = open(path, "a")  # noqa: SIM115 - kept open for the thread's life
        except OSError:
            return None
    return files[path]


def init_app(app: Flask) -> None:
    """Create the app's engine (connections are opened lazily) and close sessions on teardown."""
    cfg = app.config
    engine = make_engine(
        cfg["DATABASE_URL"],
        pool_size=cfg["DB_POOL_SIZE"],
        pool_timeout=cfg["DB_POOL_TIMEOUT"],
        connect_timeout=cfg["DB_CONNECT_TIMEOUT"],
        statement_timeout_ms=cfg["DB_STATEMENT_TIMEOUT_MS"],
    )
    app.extensions[EXTENSION_KEY] = {
        "engine": engine,
        "sessionmaker": sessionmaker(engine, expire_on_commit=False),
    }
    app.teardown_appcontext(close_session)


def get_engine() -> Engine:
    return current_app.extensions[EXTENSION_KEY]["engine"]


def get_session() -> Session:
    """The Session of the current application context, opened on first use."""
    if "db_session" not in g:
        g.db_session = current_app.extensions[EXTENSION_KEY]["sessionmaker"]()
    return g.db_session


def close_session(_exc=None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
