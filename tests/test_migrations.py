"""The alembic history and the models describe the same schema, on both backends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from analytics.models import Base
from tests.helpers import (
    ROOT,
    alembic_config,
    run_flask,
    unreachable_url,
)


def head() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current(url: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    engine.dispose()
    return revision


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


def test_the_app_never_creates_tables(app_factory, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    client = app_factory(url).test_client()
    assert client.get("/health").status_code == 200  # the database answers
    assert client.post("/track", json={"event": "e", "user_id": "u"}).status_code >= 500
    engine = create_engine(url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()


def test_the_quarter_hour_migration_fills_its_tables_from_stored_events(scratch_database):
    """Events stored at revision 0005 are counted and paired by the upgrade exactly as a
    rebuild would, and survive the downgrade."""
    from sqlalchemy import text

    from analytics import writer

    url = scratch_database
    cfg = alembic_config(url)
    engine = create_engine(url)
    try:
        command.upgrade(cfg, "0005")
        with engine.begin() as conn:
            for name, at in [
                ("play", "2025-01-01 10:00:00"),
                ("stop", "2025-01-01 10:00:30.250000"),
                ("view", "2025-01-02 23:59:59"),
                ("view", "2025-01-02 23:31:00"),  # a second quarter of an hour with events
                ("view", "1969-12-31 23:50:00"),  # a bucket before 1970: its hour rounds down
                ("play", "2025-01-03 00:00:00"),
                ("play", "2025-01-03 00:01:00"),
                ("stop", "2025-01-03 00:02:00"),
            ]:
                conn.execute(
                    text(
                        "INSERT INTO events (event, user_id, occurred_at, "
                        "received_at) VALUES (:e, 'u', :at, :at)"
                    ),
                    {"e": name, "at": at + ("" if "." in at else ".000000")},
                )
        command.upgrade(cfg, "head")
        tables = ("event_hours", "sessions", "session_buckets", "user_ordinals", "user_bitmaps")

        def contents():
            with engine.connect() as conn:
                return {
                    table: sorted(
                        tuple(row) for row in conn.execute(text(f"SELECT * FROM {table}"))
                    )
                    for table in tables
                }

        migrated = contents()
        assert [row[-1] for row in migrated["sessions"]] == [30_250_000, 60_000_000]
        assert sum(sum(row[-4:]) for row in migrated["event_hours"]) == 8
        assert [row[1] for row in migrated["user_ordinals"]] == ["u"]
        # Four days, each with a day, six-hour, hour and quarter-hour piece or more.
        assert len({row[:2] for row in migrated["user_bitmaps"] if row[0] == 96}) == 4
        writer.rebuild_aggregates(engine)
        assert contents() == migrated
        command.downgrade(cfg, "0005")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT sum(n) FROM event_counts")).scalar() == 8
            assert conn.execute(text("SELECT sum(sessions) FROM session_counts")).scalar() == 2
    finally:
        engine.dispose()


def test_the_event_hours_migration_moves_every_count_to_its_hour_and_back(scratch_database):
    """0010 puts each quarter-hour count in its hour's row and quarter, per shard, for buckets
    before 1970 too; its downgrade gives back the same counts per bucket."""
    from sqlalchemy import text

    url = scratch_database
    cfg = alembic_config(url)
    engine = create_engine(url)
    counts = [(-5, "a", 0, 1), (-1, "a", 0, 2), (0, "a", 0, 3), (6, "a", 0, 4), (6, "a", 1, 5)]
    counts += [(7, "b", 0, 6), (8, "b", 0, 0)]  # a count that added up to nothing
    try:
        command.upgrade(cfg, "0009")
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO event_buckets VALUES (:b, :e, :s, :n)"),
                [dict(zip("besn", row)) for row in counts],
            )
        command.upgrade(cfg, "0010")
        with engine.connect() as conn:
            hours = sorted(tuple(row) for row in conn.execute(text("SELECT * FROM event_hours")))
        assert hours == [
            (-8, "a", 0, 0, 0, 0, 1),
            (-4, "a", 0, 0, 0, 0, 2),
            (0, "a", 0, 3, 0, 0, 0),
            (4, "a", 0, 0, 0, 4, 0),
            (4, "a", 1, 0, 0, 5, 0),
            (4, "b", 0, 0, 0, 0, 6),
            (8, "b", 0, 0, 0, 0, 0),
        ]
        command.downgrade(cfg, "0009")
        with engine.connect() as conn:
            back = sorted(tuple(row) for row in conn.execute(text("SELECT * FROM event_buckets")))
        assert back == sorted(row for row in counts if row[-1])
    finally:
        engine.dispose()


def test_migrations_run_without_the_services_timeouts(tmp_path, monkeypatch):
    """A migration on a large database (0008 fills a table from every event) must not be cut
    by the statement timeout that bounds the service's requests."""
    from analytics import db

    made = []
    real = db.make_engine

    def recording(url, **options):
        made.append(options)
        return real(url, **options)

    monkeypatch.setattr(db, "make_engine", recording)
    command.upgrade(alembic_config(f"sqlite:///{tmp_path / 'm.db'}"), "head")
    assert made and all(
        options.get("statement_timeout_ms") == 0 and options.get("lock_wait_ms") == 0
        for options in made
    )


def test_the_migrate_command_creates_the_schema_then_leaves_it(app_factory, scratch_database):
    """``flask --app analytics migrate`` runs the package's own history; run again, it finds
    nothing to do."""
    runner = app_factory(scratch_database).test_cli_runner()
    first = runner.invoke(args=["migrate"])
    second = runner.invoke(args=["migrate"])
    assert current(scratch_database) == head()
    engine = create_engine(scratch_database)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()
    assert first.exit_code == 0, first.output
    assert f"from empty to {head()}" in first.output
    assert f"is at revision {head()}" in first.output
    assert second.exit_code == 0, second.output
    assert f"is up to date (revision {head()})" in second.output


def test_the_migrate_command_names_an_unreachable_database(app_factory, backend, tmp_path):
    app = app_factory(unreachable_url(backend, tmp_path))
    result = app.test_cli_runner().invoke(args=["migrate"])
    app.extensions["analytics.db"]["engine"].dispose()
    assert result.exit_code == 1, result.output
    assert "Error: cannot reach the database at " in result.output
    assert "Traceback" not in result.output


def test_the_projects_root_commands_run_the_same_history(tmp_path):
    """From a checkout, ``alembic upgrade head`` (alembic.ini) and ``flask --app wsgi migrate``
    both run the migrations inside the package."""
    by_alembic = f"sqlite:///{tmp_path / 'alembic.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": by_alembic},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"-> {head()}" in done.stderr  # alembic.ini's logging names each step
    by_flask = f"sqlite:///{tmp_path / 'flask.db'}"
    done = run_flask(by_flask, "migrate")
    assert done.returncode == 0, done.stderr
    assert current(by_alembic) == current(by_flask) == head()


def test_the_activity_log_downgrade_refuses_to_drop_pairs_not_yet_folded(scratch_database):
    """0011's downgrade would lose the logged pairs, which are in no bitmap yet: it refuses
    while there are any, and drops the empty table."""
    from sqlalchemy import text

    cfg = alembic_config(scratch_database)
    engine = create_engine(scratch_database)
    try:
        command.upgrade(cfg, "head")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO activity_log (user_id, bucket) VALUES ('u', 1)"))
        with pytest.raises(RuntimeError, match="rebuild-aggregates"):
            command.downgrade(cfg, "0010")
        assert "activity_log" in inspect(engine).get_table_names()
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM activity_log"))
        command.downgrade(cfg, "0010")
        assert "activity_log" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
