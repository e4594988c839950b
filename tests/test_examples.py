"""examples.sh, the curl tour, against a live gunicorn: every answer is the contract's."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from analytics.models import Event
from tests import tour
from tests.helpers import TRUNCATED_WARNING, create_key_with_flask, free_port, require_tool

pytestmark = [pytest.mark.live, pytest.mark.e2e]


@pytest.fixture(autouse=True)
def curl():
    return require_tool("curl", install="apt-get install curl")


# date(1) as BSD and macOS have it: -u, -r SECONDS and +FORMAT, and no GNU-style -d. Each call is
# logged, so the test can tell which branch of the script ran.
BSD_DATE = '''\
import datetime, sys
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(" ".join(args) + "\\n")
when = datetime.datetime.now(datetime.timezone.utc)
fmt = "%a %b %e %H:%M:%S UTC %Y"
while args:
    arg = args.pop(0)
    if arg == "-u":
        continue
    if arg == "-r":
        when = datetime.datetime.fromtimestamp(int(args.pop(0)), datetime.timezone.utc)
    elif arg.startswith("+"):
        fmt = arg[1:]
    else:
        sys.exit("date: illegal option -- " + arg.lstrip("-")[:1] + "\\nusage: date [-jnRu] "
                 "[-r seconds|file] [-v[+|-]val[ymwdHMS]] [+output_fmt]")
print(when.strftime(fmt.replace("%s", str(int(when.timestamp())))))
'''


def stored(engine, event: str) -> list[Event]:
    with Session(engine) as session:
        return list(session.scalars(select(Event).where(Event.event == event)))


def test_every_answer_of_the_tour(live_server, engine):
    server = live_server(workers=1)
    today = tour.utc_today()

    done = tour.run(server.url, user_id="user123")

    assert done.returncode == 0, done.stderr
    tour.check(done.stdout, server.url, "user123", today)
    # What the tour stored: the session it measured, and the notice in place of large metadata.
    [play], [stop] = stored(engine, "play"), stored(engine, "stop")
    assert stop.occurred_at - play.occurred_at == timedelta(seconds=tour.SESSION_SECONDS)
    assert play.meta == {"song_id": "song456", "device": "mobile", "platform": "ios"}
    [large] = stored(engine, "profile_update")
    assert large.meta["warning"] == TRUNCATED_WARNING
    assert large.meta["originalSize"] > 4096
    # The event sent twice with one event_id is stored once; so is the batch's repeated item.
    # Every event_id carries the run's epoch seconds, so another run would store them again.
    [like] = stored(engine, "like")
    [skip] = stored(engine, "skip")
    assert like.event_id.startswith("like-") and skip.event_id.startswith("skip-")
    assert like.event_id.removeprefix("like-") == skip.event_id.removeprefix("skip-")
    assert sorted(event.meta["page"] for event in stored(engine, "page_view")) == [
        "/pricing",
        "/signup",
    ]


def test_the_tour_with_a_key_on_a_server_that_needs_one(live_server, database_url):
    server = live_server(workers=1, AUTH_MODE="all")
    secret = create_key_with_flask(
        database_url, "tour", "--scope", "ingest", "--scope", "read", "--scope", "admin"
    )
    today = tour.utc_today()

    refused = tour.parse(tour.run(server.url, user_id="keyless").stdout)
    assert {(step.status, step.body["message"]) for step in refused} == {(401, "API key required")}

    done = tour.run(server.url, user_id="keyed", env={"ANALYTICS_KEY": secret})
    assert done.returncode == 0, done.stderr
    tour.check(done.stdout, server.url, "keyed", today)


def test_a_rerun_sends_new_event_ids(live_server, engine):
    server = live_server(workers=1)
    for _ in range(2):  # the same user and server; the two runs may start in the same second
        done = tour.run(server.url, user_id="user123")
        assert done.returncode == 0, done.stderr
        # Nothing of the first run comes back as a duplicate of the second.
        tour.check_event_ids_and_batches(tour.parse(done.stdout))
    assert len(stored(engine, "like")) == len(stored(engine, "skip")) == 2


def test_the_tour_runs_with_bsd_date(live_server, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "date-calls.log"
    fake = bin_dir / "date"
    fake.write_text(f"#!{sys.executable}\n" + BSD_DATE.format(log=str(calls)))
    fake.chmod(0o755)
    server = live_server(workers=1)
    today = tour.utc_today()

    # With a trailing slash on BASE_URL too, which the script drops.
    done = tour.run(
        server.url + "/", user_id="mac-user", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )

    assert done.returncode == 0, done.stderr
    tour.check(done.stdout, server.url, "mac-user", today)
    assert any(call.startswith("-u -r ") for call in calls.read_text().splitlines())


def test_the_tour_fails_when_the_server_cannot_be_reached():
    done = tour.run(f"http://127.0.0.1:{free_port()}")
    assert done.returncode != 0
    assert "curl" in done.stderr
