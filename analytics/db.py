"""Database access: one engine per application, one Session per application context."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

EXTENSION_KEY = "analytics.db"


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    pool_timeout: int = 10,
    connect_timeout: int = 5,
    statement_timeout_ms: int = 30000,
    lock_wait_ms: int = 3000,
) -> Engine:
    """An engine tuned for this service on SQLite or PostgreSQL."""
    from analytics.dialects import postgresql, sqlite

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return sqlite.make_engine(parsed, connect_timeout, lock_wait_ms)
    connect_args = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = postgresql.engine_arguments(
            connect_timeout, statement_timeout_ms, lock_wait_ms
        )
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        # A connection killed by a database restart is replaced instead of failing a request.
        pool_pre_ping=True,
        connect_args=connect_args,
        # A failed statement's error must not carry the events it held into the logs.
        hide_parameters=True,
    )


def ping(session: Session) -> None:
    """Raise if the database does not answer."""
    session.execute(text("SELECT 1"))


def init_app(app: Flask) -> None:
    """Create the app's engine (connections are opened lazily) and close sessions on teardown."""
    cfg = app.config
    engine = make_engine(
        cfg["DATABASE_URL"],
        pool_size=cfg["DB_POOL_SIZE"],
        pool_timeout=cfg["DB_POOL_TIMEOUT"],
        connect_timeout=cfg["DB_CONNECT_TIMEOUT"],
        statement_timeout_ms=cfg["DB_STATEMENT_TIMEOUT_MS"],
        lock_wait_ms=cfg["LOCK_WAIT_MS"],
    )
    app.extensions[EXTENSION_KEY] = {
        "engine": engine,
        "sessionmaker": sessionmaker(engine, expire_on_commit=False),
    }
    app.teardown_appcontext(close_session)


def get_engine() -> Engine:
    engine: Engine = current_app.extensions[EXTENSION_KEY]["engine"]
    return engine


def get_session() -> Session:
    """The Session of the current application context, opened on first use."""
    if "db_session" not in g:
        g.db_session = current_app.extensions[EXTENSION_KEY]["sessionmaker"]()
    session: Session = g.db_session
    return session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
