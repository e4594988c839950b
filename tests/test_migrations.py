"""The alembic history and the models describe the same schema, on both backends."""
from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from analytics.models import Base
from conftest import alembic_config


def test_models_and_migrations_agree(database_url):
    engine = create_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_single_head():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_downgrade_and_upgrade_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    engine = create_engine(url)
    assert "events" not in inspect(engine).get_table_names()
    command.upgrade(cfg, "head")
    assert "events" in inspect(engine).get_table_names()
    engine.dispose()


def test_the_app_never_creates_tables(tmp_path):
    from analytics import create_app

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    app = create_app({"TESTING": True, "DATABASE_URL": url})
    client = app.test_client()
    client.get("/health")
    client.post("/track", json={"event": "e", "user_id": "u"})
    engine = create_engine(url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()
    app.extensions["analytics.db"]["engine"].dispose()
