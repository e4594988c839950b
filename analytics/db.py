"""Database access: one engine per application, one Session per application context."""
from __future__ import annotations

import contextlib
import fcntl
import os
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
    operating system wakes a waiter as soon as it is released, and only then writes.
    """
    turn = _take_turn(engine)
    try:
        yield
    finally:
        _give_turn(turn)


def hold_writer_turn(session: Session) -> None:
    """Take the writer turn (see writer_turn) for the rest of ``session``'s transaction, just
    before its first write: the Python work that comes before does not need it.
    ``release_writer_turn`` gives it back once the transaction has ended."""
    if "writer_turn" not in session.info:
        session.info["writer_turn"] = _take_turn(session.get_bind())


def release_writer_turn(session: Session) -> None:
    _give_turn(session.info.pop("writer_turn", None))


def _take_turn(engine: Engine):
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    turn = _writer_lock(f"{database}-writer.lock")
    if turn is None:  # no such folder, not writable: the database itself will say so
        return None
    in_process, descriptor = turn
    in_process.acquire()  # the other threads of this process
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # the other processes
    except BaseException:
        in_process.release()
        raise
    return turn


def _give_turn(turn) -> None:
    if turn is not None:
        in_process, descriptor = turn
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        in_process.release()


_writer_locks: dict[tuple[int, str], tuple[threading.Lock, int]] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(path: str) -> tuple[threading.Lock, int] | None:
    """This process's lock for ``path`` and its open descriptor of the file, or None when the
    file cannot be opened. Opened once per process (after a fork the file is opened again:
    flock locks belong to an open file, which a forked child would share with its parent)."""
    key = (os.getpid(), path)
    with _writer_locks_guard:
        if key not in _writer_locks:
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError:
                return None
            _writer_locks[key] = (threading.Lock(), descriptor)
        return _writer_locks[key]


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
