"""``flask --app wsgi purge``: retention by receive time, on both backends."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from analytics import cli, retention
from analytics.db import make_engine
from analytics.models import Event
from tests.helpers import count_events, run_flask, run_in_terminal, unreachable_url

# A fixed "now" with a fraction of a second, to show that the cutoff is rounded down.
NOW = datetime(2025, 3, 31, 12, 0, 0, 750000, tzinfo=UTC)


def add_events(
    engine,
    *received: datetime,
    event: str = "play",
    user_id: str = "u",
    occurred_at: datetime | None = None,
) -> None:
    """Store one event per receive time (occurring then too, unless ``occurred_at`` is given)."""
    with Session(engine) as session:
        session.add_all(
            Event(event=event, user_id=user_id, received_at=at, occurred_at=occurred_at or at)
            for at in received
        )
        session.commit()


def received_times(engine) -> list[datetime]:
    with Session(engine) as session:
        return list(session.scalars(select(Event.received_at).order_by(Event.received_at)))


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@pytest.fixture
def frozen_now(monkeypatch):
    """The purge command's clock, stopped at NOW."""
    monkeypatch.setattr(cli, "utcnow", lambda: NOW)
    return NOW


def purge(runner, *args: str):
    result = runner.invoke(args=["purge", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_boundary_events_received_exactly_at_the_cutoff_are_kept(runner, engine, frozen_now):
    cutoff = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)  # NOW - 30 days, whole second
    just_before = cutoff - timedelta(milliseconds=1)
    long_before = cutoff - timedelta(days=10)
    kept = [cutoff, cutoff + timedelta(milliseconds=1), cutoff + timedelta(milliseconds=500), NOW]
    add_events(engine, just_before, long_before, *kept)

    result = purge(runner)

    assert result.exit_code == 0
    assert result.output == f"Purged 2 events received before {iso(cutoff)}\n"
    assert received_times(engine) == kept


def test_retention_follows_receive_time_not_event_time(runner, engine, frozen_now):
    # A backfilled event that happened years ago but arrived yesterday is kept for its full
    # retention period; one that arrived long ago goes, whatever its timestamp says.
    yesterday = NOW - timedelta(days=1)
    add_events(engine, yesterday, occurred_at=datetime(2020, 1, 1, tzinfo=UTC))
    add_events(engine, NOW - timedelta(days=45), occurred_at=NOW - timedelta(days=45))

    result = purge(runner)

    assert result.output.startswith("Purged 1 events received before ")
    assert received_times(engine) == [yesterday]


def test_empty_table(runner, engine):
    result = purge(runner)
    assert result.exit_code == 0
    assert result.output.startswith("Purged 0 events received before ")
    assert result.output.count("\n") == 1
    assert count_events(engine) == 0


def test_dry_run_reports_and_deletes_nothing(runner, engine, frozen_now):
    old = [NOW - timedelta(days=31), NOW - timedelta(days=60), NOW - timedelta(days=400)]
    add_events(engine, *old, NOW - timedelta(days=29))

    result = purge(runner, "--dry-run")

    assert result.exit_code == 0
    assert result.output == (
        f"Would purge {len(old)} events received before {iso(NOW - timedelta(days=30))}\n"
    )
    assert count_events(engine) == len(old) + 1


def test_batches_smaller_than_the_backlog_delete_it_all(runner, engine, frozen_now):
    old = [NOW - timedelta(days=31, minutes=i) for i in range(25)]
    recent = [NOW - timedelta(hours=i) for i in range(5)]
    add_events(engine, *old, *recent)

    result = purge(runner, "--batch-size", "4")

    assert result.exit_code == 0
    assert result.output.startswith(f"Purged {len(old)} events received before ")
    assert received_times(engine) == sorted(recent)


def test_each_batch_is_bounded(engine):
    old = [NOW - timedelta(days=40, seconds=i) for i in range(10)]
    add_events(engine, *old)
    batches: list[int] = []

    purged = retention.purge_expired(
        engine, retention.retention_cutoff(30, NOW), batch_size=4, on_batch=batches.append
    )

    assert purged == len(old)
    assert batches == [4, 4, 2]
    assert count_events(engine) == 0


def test_default_batches_are_smaller_on_sqlite(backend, engine):
    old = [NOW - timedelta(days=40, seconds=i) for i in range(450)]
    add_events(engine, *old)
    batches: list[int] = []

    purged = retention.purge_expired(
        engine, retention.retention_cutoff(30, NOW), on_batch=batches.append
    )

    assert purged == len(old)
    assert batches == ([200, 200, 50] if backend == "sqlite" else [450])
    assert count_events(engine) == 0


class Sleeps(list):
    """Stands in for retention's time.sleep: records each rest instead of taking it."""

    def __init__(self, monkeypatch):
        super().__init__()
        monkeypatch.setattr(retention, "sleep", self.append)


def test_the_purge_rests_after_each_batch_as_long_as_it_took(backend, engine, monkeypatch):
    add_events(engine, *[NOW - timedelta(days=40, seconds=i) for i in range(10)])
    sleeps = Sleeps(monkeypatch)
    moments = iter(range(100))  # each batch "takes" 1 s, from one monotonic reading to the next
    monkeypatch.setattr(retention, "monotonic", lambda: next(moments))

    purged = retention.purge_expired(
        engine, retention.retention_cutoff(30, NOW), batch_size=4, pace=0.5
    )

    assert purged == 10
    assert sleeps == [0.5, 0.5, 0.5]  # three batches (4, 4, 2), no rest after the empty one


def test_full_speed_rests_only_to_let_sqlite_writers_in(
    backend, runner, engine, frozen_now, monkeypatch
):
    add_events(engine, *[NOW - timedelta(days=40, seconds=i) for i in range(10)])
    sleeps = Sleeps(monkeypatch)

    result = purge(runner, "--full-speed", "--batch-size", "4")

    assert result.output.startswith("Purged 10 events")
    assert sleeps == ([retention.WRITERS_FIRST_S] * 3 if backend == "sqlite" else [])


def test_by_default_the_command_rests_between_batches(runner, engine, frozen_now, monkeypatch):
    add_events(engine, *[NOW - timedelta(days=40, seconds=i) for i in range(10)])
    sleeps = Sleeps(monkeypatch)

    assert purge(runner, "--batch-size", "4").output.startswith("Purged 10 events")
    assert len(sleeps) == 3 and all(rest > 0 for rest in sleeps)


def test_days_option_overrides_retention_days(app, runner, engine, frozen_now):
    app.config["RETENTION_DAYS"] = 7
    add_events(engine, NOW - timedelta(days=2), NOW - timedelta(days=10), NOW - timedelta(days=40))

    assert purge(runner, "--dry-run").output.startswith("Would purge 2 events")
    assert purge(runner, "--days", "30").output == (
        f"Purged 1 events received before {iso(NOW - timedelta(days=30))}\n"
    )
    assert len(received_times(engine)) == 2
    assert purge(runner).output == (
        f"Purged 1 events received before {iso(NOW - timedelta(days=7))}\n"
    )
    assert received_times(engine) == [NOW - timedelta(days=2)]


@pytest.mark.parametrize("args", [["--days", "0"], ["--days", "x"], ["--batch-size", "0"]])
def test_invalid_options_are_refused(runner, engine, args):
    add_events(engine, NOW - timedelta(days=400))
    result = runner.invoke(args=["purge", *args])
    assert result.exit_code == 2
    assert count_events(engine) == 1


def test_running_twice_purges_once(runner, engine, frozen_now):
    add_events(engine, *(NOW - timedelta(days=31 + i) for i in range(3)), NOW)

    assert purge(runner).output.startswith("Purged 3 events")
    second = purge(runner)
    assert second.exit_code == 0
    assert second.output.startswith("Purged 0 events")
    assert received_times(engine) == [NOW]


def test_concurrent_purges_together_delete_exactly_the_old_events(database_url, engine):
    old = [NOW - timedelta(days=31, seconds=i) for i in range(600)]
    recent = [NOW - timedelta(seconds=i) for i in range(20)]
    add_events(engine, *old, *recent)
    cutoff = retention.retention_cutoff(30, NOW)
    purgers = 3
    start = threading.Barrier(purgers)
    results: list[int] = []
    errors: list[BaseException] = []

    def run():
        own_engine = make_engine(database_url)
        try:
            start.wait()
            results.append(retention.purge_expired(own_engine, cutoff, batch_size=7))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            own_engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(purgers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sum(results) == len(old)
    assert received_times(engine) == sorted(recent)


def test_command_line_prints_one_summary_line_when_not_a_terminal(database_url, engine):
    add_events(engine, *(datetime.now(UTC) - timedelta(days=50 + i) for i in range(5)))

    done = run_flask(database_url, "purge", "--batch-size", "2")

    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("Purged 5 events received before ")
    cutoff = datetime.fromisoformat(line.rsplit(" ", 1)[1].replace("Z", "+00:00"))
    assert cutoff.tzinfo is not None and cutoff.utcoffset() == timedelta(0)
    assert count_events(engine) == 0


def test_command_line_shows_a_progress_bar_in_a_terminal(database_url, engine):
    add_events(engine, *(datetime.now(UTC) - timedelta(days=50, seconds=i) for i in range(12)))
    text = run_in_terminal(["purge", "--batch-size", "5"], database_url)
    assert "Purging events received before " in text
    assert "100%" in text
    assert "Purged 12 events received before " in text
    assert count_events(engine) == 0


def test_unreachable_database_is_one_clear_line_and_a_failure(backend, tmp_path):
    url = unreachable_url(backend, tmp_path)

    done = run_flask(url, "purge")

    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: cannot reach the database at ")
    assert "Traceback" not in done.stderr


def test_unreachable_database_fails_the_dry_run_too(app_factory, backend, tmp_path):
    app = app_factory(unreachable_url(backend, tmp_path))
    result = app.test_cli_runner().invoke(args=["purge", "--dry-run"])
    assert result.exit_code == 1
    assert "Error: cannot reach the database at " in result.output
    assert "Would purge" not in result.output


def totals(client, path: str, user_id: str, key: str) -> int:
    today = date.today()
    response = client.get(
        path,
        query_string={
            "start_date": (today - timedelta(days=90)).isoformat(),
            "end_date": today.isoformat(),
            "group_by": "month",
            "user_id": user_id,
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return sum(row.get(key, 0) for row in response.get_json()["data"])


def test_purged_events_leave_metrics_and_sessions(client, runner, engine):
    now = datetime.now(UTC)
    for user_id, age in (("old-listener", timedelta(days=45)), ("new-listener", timedelta(days=3))):
        play = now - age
        add_events(engine, play, event="play", user_id=user_id)
        add_events(engine, play + timedelta(minutes=3), event="stop", user_id=user_id)
    # Written behind the API's back: the aggregates learn of them from a rebuild.
    assert runner.invoke(args=["rebuild-aggregates"]).exit_code == 0

    before = {
        user: (
            totals(client, "/metrics", user, "play"),
            totals(client, "/sessions", user, "sessionCount"),
        )
        for user in ("old-listener", "new-listener")
    }
    assert before == {"old-listener": (1, 1), "new-listener": (1, 1)}

    result = purge(runner)
    assert result.output.startswith("Purged 2 events")

    assert totals(client, "/metrics", "old-listener", "play") == 0
    assert totals(client, "/sessions", "old-listener", "sessionCount") == 0
    assert totals(client, "/metrics", "new-listener", "play") == 1
    assert totals(client, "/sessions", "new-listener", "sessionCount") == 1
