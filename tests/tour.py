"""The curl tour (examples.sh): run it, read what it printed, and check every answer against the
contract. Used against gunicorn directly and through nginx with TLS."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from tests.helpers import DUPLICATE, ROOT, SUCCESS, TRUNCATED_WARNING

SCRIPT = ROOT / "examples.sh"
# The tour's invalid batch item: a timestamp that is a date without a time.
TIMESTAMP_MESSAGE = "timestamp must be an ISO 8601 date and time, e.g. 2025-01-18T14:30:00Z"
TITLES = [
    "Track a play event",
    "Track a stop event",
    "Metrics for the last 7 days, by day, for {user}",
    "Sessions for the last 30 days, by week",
    "Active users for the last 30 days, by week",
    "Error: an invalid date",
    "Error: a missing date",
    "Metadata over the size limit",
    "Track an event of a user whose id has a slash and a space",
    "Export the last 7 days of {user} as CSV",
    "Every event of that user, as NDJSON",
    "Erase that user",
    "Track with an event_id",
    "Track the same event_id again (a duplicate)",
    "Batch: one good, one invalid, one repeated event_id",
    "Batch as NDJSON",
]
# The script plays a song 3 minutes before it starts and stops it 2 minutes later.
SESSION_SECONDS = 120


@dataclass
class Step:
    """One request of the tour as printed: heading, request line, response body (parsed when
    it is one JSON document; ``text`` as printed) and status."""

    title: str
    method: str
    url: str
    status: int
    body: dict | None
    text: str = ""

    @property
    def query(self) -> dict[str, str]:
        return {key: values[-1] for key, values in parse_qs(urlsplit(self.url).query).items()}


def run(
    base_url: str,
    user_id: str = "user123",
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run examples.sh against ``base_url``, as a user would."""
    return subprocess.run(
        ["sh", str(SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "BASE_URL": base_url,
            "USER_ID": user_id,
            # The servers under test are on loopback: never through a proxy of the machine.
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            **(env or {}),
        },
    )


def parse(output: str) -> list[Step]:
    steps = []
    for block in re.split(r"^== ", output, flags=re.MULTILINE)[1:]:
        lines = block.strip("\n").splitlines()
        title, request, status = lines[0], lines[1], lines[-1]
        method, url = request.split(" ", 1)
        assert re.fullmatch(r"HTTP \d{3}", status), block
        text = "\n".join(lines[2:-1])
        try:
            body = json.loads(text)
        except ValueError:  # an export: NDJSON or CSV
            body = None
        steps.append(Step(title, method, url, int(status.split()[1]), body, text))
    return steps


def utc_today() -> date:
    return datetime.now(UTC).date()


def check(output: str, base_url: str, user_id: str, today_before: date) -> list[Step]:
    """Assert that every answer of the tour is the contract's; return the parsed steps."""
    steps = parse(output)
    assert [step.title for step in steps] == [t.format(user=user_id) for t in TITLES]
    base = base_url.rstrip("/")
    assert all(step.url.startswith(base + "/") for step in steps)
    play, stop, metrics, sessions, active, invalid, missing, large = steps[:8]

    for step in (play, stop):
        assert (step.method, urlsplit(step.url).path) == ("POST", "/track")
        assert (step.status, step.body) == (200, SUCCESS)

    # The script's "today" is UTC, taken while it ran.
    today = date.fromisoformat(metrics.query["end_date"])
    assert today_before <= today <= utc_today()

    assert metrics.query == {
        "start_date": (today - timedelta(days=6)).isoformat(),
        "end_date": today.isoformat(),
        "group_by": "day",
        "user_id": user_id,
    }
    assert metrics.status == 200, metrics.body
    assert metrics.body["status"] == "success"
    rows = metrics.body["data"]
    labels = [row["date"] for row in rows]
    assert labels == sorted(labels)
    assert all(metrics.query["start_date"] <= label <= today.isoformat() for label in labels)
    assert sum(row.get("play", 0) for row in rows) == 1
    assert sum(row.get("stop", 0) for row in rows) == 1

    assert sessions.query == {
        "start_date": (today - timedelta(days=29)).isoformat(),
        "end_date": today.isoformat(),
        "group_by": "week",
    }
    assert sessions.status == 200, sessions.body
    assert sessions.body["status"] == "success"
    [week] = sessions.body["data"]
    assert date.fromisoformat(week["date"]).isoweekday() == 1  # weeks start on Monday
    assert week == {
        "date": week["date"],
        "totalDuration": SESSION_SECONDS,
        "sessionCount": 1,
        "averageDuration": SESSION_SECONDS,
    }

    assert active.query == sessions.query
    assert active.status == 200, active.body
    assert active.body["status"] == "success"
    # The tour's user, and whoever else the server has seen in that week.
    [week] = [row for row in active.body["data"] if row["date"] == week["date"]]
    assert week["users"] >= 1

    assert invalid.query["start_date"] == "2024-13-45"
    assert invalid.status == 400
    assert invalid.body["status"] == "error"
    assert invalid.body["message"] == "Invalid date format. Use YYYY-MM-DD"

    assert "start_date" not in missing.query
    assert missing.status == 400
    assert missing.body["status"] == "error"
    assert missing.body["message"] == "start_date and end_date are required"

    assert (large.method, urlsplit(large.url).path) == ("POST", "/track")
    assert large.status == 200
    assert large.body == {**SUCCESS, "warnings": [TRUNCATED_WARNING]}

    check_user_data(steps[8:12], user_id)
    check_event_ids_and_batches(steps)
    return steps


def check_user_data(steps: list[Step], user_id: str) -> None:
    """Assert the answers of the export and erasure steps."""
    guest, exported, events, erased = steps
    assert (guest.status, guest.body) == (200, SUCCESS)

    assert exported.query["format"] == "csv" and exported.query["user_id"] == user_id
    assert exported.status == 200, exported.text
    header, *rows = [line.rstrip("\r") for line in exported.text.splitlines() if line]
    assert header == "timestamp,event,user_id,event_id,received_at,metadata"
    names = [row.split(",")[1] for row in rows]
    assert {"play", "stop", "profile_update"} <= set(names)
    assert all(row.split(",")[2] == user_id for row in rows)
    stamps = [row.split(",")[0] for row in rows]
    assert stamps == sorted(stamps)

    guest_id = f"{user_id}/guest "
    path = urlsplit(events.url).path
    assert path.startswith(f"/users/{user_id}%2Fguest%20") and path.endswith("/events")
    assert events.status == 200, events.text
    [line] = [json.loads(line) for line in events.text.splitlines() if line]
    assert list(line) == ["event", "user_id", "timestamp", "metadata", "event_id", "received_at"]
    assert line["event"] == "play" and line["user_id"].startswith(guest_id)

    assert (erased.method, urlsplit(erased.url).path) == ("DELETE", path[: -len("/events")])
    assert (erased.status, erased.body) == (200, {"status": "success", "deleted": 1})


def check_event_ids_and_batches(steps: list[Step]) -> None:
    """Assert the answers of the tour's last steps: an event_id sent twice, then two batches.

    They are the same on every run, also against a server that has seen the tour before."""
    first, again, batch, ndjson = steps[-4:]
    assert [step.title for step in steps[-4:]] == TITLES[-4:]

    # The same event_id sent twice: stored once, the second answer says so.
    for step in (first, again):
        assert (step.method, urlsplit(step.url).path) == ("POST", "/track")
    assert (first.status, first.body) == (200, SUCCESS)
    assert (again.status, again.body) == (200, DUPLICATE)

    for step in (batch, ndjson):
        assert (step.method, urlsplit(step.url).path) == ("POST", "/track/batch")
    # Three items: one stored, one rejected (by its 0-based index), one repeating the first's
    # event_id. The event_ids are new on every run, so the counts are the same on every run.
    assert batch.status == 200, batch.body
    assert batch.body == {
        "status": "success",
        "accepted": 1,
        "duplicates": 1,
        "rejected": [{"index": 1, "message": TIMESTAMP_MESSAGE}],
        "warnings": [],
    }
    # Two NDJSON lines, both stored.
    assert ndjson.status == 200, ndjson.body
    assert ndjson.body == {
        "status": "success",
        "accepted": 2,
        "duplicates": 0,
        "rejected": [],
        "warnings": [],
    }
