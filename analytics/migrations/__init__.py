"""The alembic history of the schema, shipped inside the package: env.py, script.py.mako and
versions/. ``flask --app analytics migrate`` runs it with the configuration built here, so an
installed package needs no alembic.ini; from the project's root, ``alembic upgrade head`` reads
alembic.ini, which points here too."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from analytics.db import make_engine

LOCATION = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """An alembic configuration for the database at ``url``, with this folder's history."""
    cfg = Config()
    cfg.set_main_option("script_location", str(LOCATION))
    # The option's value goes through configparser, which reads % as interpolation.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head() -> str | None:
    """The newest revision of the history."""
    return ScriptDirectory(str(LOCATION)).get_current_head()


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at; None before the first migration."""
    engine = make_engine(url, statement_timeout_ms=0, lock_wait_ms=0)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema of the database at ``url`` to ``revision``."""
    command.upgrade(alembic_config(url), revision)
