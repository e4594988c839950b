"""GET /metrics, GET /sessions and GET /active-users agree with a small pure-Python model of the
contract (API.md: "GET /metrics", "GET /sessions", "GET /active-users" and "Query options"),
for generated histories and
generated queries, on every backend.

Histories: a few users' play/stop/pause/other events around a daylight-saving change (or a
local midnight) of Europe/Berlin, America/Los_Angeles, Asia/Kolkata, Asia/Kathmandu,
Australia/Lord_Howe or Pacific/Chatham in 2024/2025; instants at quarter-hour edges (and a
microsecond either side), at local wall-clock times that are skipped or repeated, at local
midnights, and shared by several events (equal timestamps). They are stored in chunks, each
through a write path chosen by hypothesis: POST /track one by one, POST /track/batch (JSON or
NDJSON), the ``import`` command, or ``writer.store_events`` directly (rows in shuffled order,
some received long ago); between chunks, a purge (``retention.purge_expired``) or a deletion
(``writer.delete_events``) removes events, and the model removes them too.

Queries: every group_by (hour, day, week, month), every week_start in mixed case, fill none or
zero, repeatable ``event`` filters on /metrics and /active-users, with and without user_id
(not on /active-users), in UTC or any of the
zones, over local date ranges around the history.

The model uses nothing of analytics/: only zoneinfo. Arrival order (which breaks ties between
equal timestamps when pairing sessions) is the ids the database gave, read back after each
chunk and checked against what was sent.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from analytics import retention, writer
from analytics.models import Base, Event
from analytics.rows import EventRow

UTC = UTC
MICROSECOND = timedelta(microseconds=1)
QUARTER = timedelta(minutes=15)
GROUP_BYS = ("hour", "day", "week", "month")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ZONES = (
    "Europe/Berlin",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
)
QUERY_ZONES = ZONES + ("UTC",)

# Examples per backend; raise it to search harder locally. The default keeps this file at about
# a minute and a half for both backends on a 2-core machine.
MAX_EXAMPLES = int(os.environ.get("ANALYTICS_PROPERTY_EXAMPLES", "200"))


# --- the model: the contract, written as plainly as possible, with zoneinfo only ---------------


@dataclass(frozen=True)
class StoredEvent:
    """One event as stored; ``id`` is its arrival order."""

    id: int
    user_id: str
    event: str
    occurred_at: datetime  # aware, UTC


@dataclass(frozen=True)
class Query:
    start: date
    end: date
    group_by: str = "day"
    tz: str | None = None  # None: not sent (UTC)
    week_start: str | None = None  # None: not sent (monday); any case
    fill: str | None = None  # None: not sent (none)
    events: tuple[str, ...] = ()  # /metrics only; repeats allowed
    user_id: str | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz or "UTC")

    @property
    def first_weekday(self) -> int:
        return WEEKDAYS.index((self.week_start or "monday").lower())

    @property
    def fill_zero(self) -> bool:
        return self.fill == "zero"

    def query_string(self, with_events: bool) -> str:
        params = [
            ("start_date", self.start.isoformat()),
            ("end_date", self.end.isoformat()),
            ("group_by", self.group_by),
        ]
        for name in ("tz", "week_start", "fill", "user_id"):
            if getattr(self, name) is not None:
                params.append((name, getattr(self, name)))
        if with_events:
            params += [("event", name) for name in self.events]
        return urlencode(params)


def offset_text(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def local_label(at: datetime, query: Query) -> tuple[date, str]:
    """(local date, period label) of an instant: the wall clock of the zone at that instant."""
    local = at.astimezone(query.zone)
    day = local.date()
    if query.group_by == "hour":
        return day, f"{day.isoformat()}T{local.hour:02d}:00{offset_text(local.utcoffset())}"
    if query.group_by == "week":
        day_of_week = day - timedelta(days=(day.weekday() - query.first_weekday) % 7)
        return day, day_of_week.isoformat()
    if query.group_by == "month":
        return day, day.replace(day=1).isoformat()
    return day, day.isoformat()


@lru_cache(maxsize=512)
def all_periods(query: Query) -> tuple[str, ...]:
    """Every period that overlaps the range, ordered by its first instant.

    Walks the instants from 15 hours before the range's first UTC midnight to 15 hours after
    its last (every local date lies within that) in quarter-hour steps: every offset of these
    zones, and every change of one, is on a quarter hour, which the walk checks as it goes.
    """
    labels: dict[str, None] = {}
    at = datetime.combine(query.start, time.min, tzinfo=UTC) - timedelta(hours=15)
    stop = datetime.combine(query.end + timedelta(days=1), time.min, tzinfo=UTC) + timedelta(
        hours=15
    )
    zone = query.zone
    while at < stop:
        last = at + QUARTER - MICROSECOND
        assert at.astimezone(zone).utcoffset() == last.astimezone(zone).utcoffset(), at
        day, label = local_label(at, query)
        if query.start <= day <= query.end:
            labels.setdefault(label)
        at += QUARTER
    return tuple(labels)


def in_order(first_instant: dict[str, datetime], query: Query) -> list[str]:
    """The labels that have something, in the order the contract lists them: by each period's
    first instant (a period is one stretch of time, so its earliest event orders it as well),
    or every period of the range with fill=zero."""
    if query.fill_zero:
        labels = list(all_periods(query))
        assert set(first_instant) <= set(labels)
        return labels
    return sorted(first_instant, key=first_instant.__getitem__)


def model_metrics(events: list[StoredEvent], query: Query) -> list[dict]:
    wanted = set(query.events)
    counts: dict[str, Counter] = defaultdict(Counter)
    first: dict[str, datetime] = {}
    for e in events:
        if query.user_id not in (None, e.user_id) or (wanted and e.event not in wanted):
            continue
        day, label = local_label(e.occurred_at, query)
        if query.start <= day <= query.end:
            counts[label][e.event] += 1
            first[label] = min(first.get(label, e.occurred_at), e.occurred_at)
    if not query.fill_zero:
        return [{"date": label, **counts[label]} for label in in_order(first, query)]
    names = wanted.union(*counts.values())
    return [
        {"date": label, **{name: counts[label][name] for name in names}}
        for label in in_order(first, query)
    ]


def model_active_users(events: list[StoredEvent], query: Query) -> list[dict]:
    wanted = set(query.events)
    users: dict[str, set] = defaultdict(set)
    first: dict[str, datetime] = {}
    for e in events:
        if wanted and e.event not in wanted:
            continue
        day, label = local_label(e.occurred_at, query)
        if query.start <= day <= query.end:
            users[label].add(e.user_id)
            first[label] = min(first.get(label, e.occurred_at), e.occurred_at)
    return [{"date": label, "users": len(users[label])} for label in in_order(first, query)]


def model_session_pairs(events: list[StoredEvent]) -> list[tuple[datetime, datetime, str]]:
    """(play time, stop time, user) of every session in the whole history.

    For each stop, the user's most recent earlier play-or-stop event (by timestamp, then
    arrival); when that is a play, the two make a session.
    """
    pairs = []
    for user in {e.user_id for e in events}:
        sequence = sorted(
            (e for e in events if e.user_id == user and e.event in ("play", "stop")),
            key=lambda e: (e.occurred_at, e.id),
        )
        for previous, current in zip(sequence, sequence[1:]):
            if current.event == "stop" and previous.event == "play":
                pairs.append((previous.occurred_at, current.occurred_at, user))
    return pairs


def round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def model_sessions(events: list[StoredEvent], query: Query) -> list[dict]:
    durations: dict[str, list[timedelta]] = defaultdict(list)
    first: dict[str, datetime] = {}
    for play_at, stop_at, user in model_session_pairs(events):
        day, label = local_label(play_at, query)
        if query.start <= day <= query.end and query.user_id in (None, user):
            durations[label].append(stop_at - play_at)
            first[label] = min(first.get(label, play_at), play_at)
    data = []
    for label in in_order(first, query):
        count = len(durations[label])
        total = Fraction(sum(durations[label], timedelta()) // MICROSECOND, 1_000_000)
        data.append(
            {
                "date": label,
                "totalDuration": round_half_up(total),
                "sessionCount": count,
                "averageDuration": round_half_up(total / count) if count else 0,
            }
        )
    return data


# --- generators --------------------------------------------------------------------------------

USERS = ("u1", "u2", "u3")
OTHER_EVENTS = ("pause", "skip", "Play", "STOP", "status", "__proto__", "événement")
EVENT_NAMES = ("play", "stop") + OTHER_EVENTS


def offset_changes(zone_name: str) -> list[datetime]:
    """The instants in 2024 and 2025 at which the zone's UTC offset changes (to the minute)."""
    zone = ZoneInfo(zone_name)
    changes = []
    at = datetime(2024, 1, 1, tzinfo=UTC)
    offset = at.astimezone(zone).utcoffset()
    while at < datetime(2026, 1, 1, tzinfo=UTC):
        following = at + timedelta(hours=1)
        if following.astimezone(zone).utcoffset() != offset:
            minute = at
            while minute.astimezone(zone).utcoffset() == offset:
                minute += timedelta(minutes=1)
            changes.append(minute)
            offset = following.astimezone(zone).utcoffset()
        at = following
    return changes


def local_midnight(zone_name: str, day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(zone_name)).astimezone(UTC)


# (zone, instant) that a history gathers around: every offset change of 2024/2025, and the
# local midnights that start a year and a leap day.
ANCHORS = tuple(
    [(zone, at) for zone in ZONES for at in offset_changes(zone)]
    + [
        (zone, local_midnight(zone, day))
        for zone in ZONES
        for day in (date(2025, 1, 1), date(2024, 2, 29))
    ]
)
assert {zone for zone, _ in ANCHORS} == set(ZONES)
assert len(ANCHORS) >= 4 * 4 + 2 * len(ZONES)  # the four zones with DST change twice a year

# Wall-clock times where the changes happen (and either side), midnight and its neighbours.
WALL_TIMES = (
    time(0, 0),
    time(0, 0, 0, 1),
    time(23, 59, 59, 999_999),
    time(23, 0),
    time(23, 30),
    time(1, 0),
    time(1, 30),
    time(1, 59, 59, 999_999),
    time(2, 0),
    time(2, 15),
    time(2, 30),
    time(2, 45),
    time(3, 0),
    time(3, 30),
    time(3, 44, 59, 999_999),
    time(3, 45),
    time(12, 0, 0, 500_000),
)


def instants_near(zone_name: str, anchor: datetime) -> st.SearchStrategy[datetime]:
    """UTC instants within a few days of the anchor: anywhere to the microsecond, on a quarter
    hour (or a microsecond off it), or at a wall-clock time of the anchor's zone (skipped and
    repeated ones included, both folds)."""
    zone = ZoneInfo(zone_name)
    anywhere = st.integers(-4 * 86_400_000_000, 4 * 86_400_000_000).map(
        lambda us: anchor + timedelta(microseconds=us)
    )
    edges = st.builds(
        lambda quarters, off: anchor + quarters * QUARTER + off * MICROSECOND,
        st.integers(-96 * 3, 96 * 3),
        st.sampled_from((0, 0, -1, 1)),
    )
    local_day = anchor.astimezone(zone).date()
    wall = st.builds(
        lambda days, wall_time, fold: datetime.combine(
            local_day + timedelta(days=days), wall_time.replace(fold=fold), tzinfo=zone
        ).astimezone(UTC),
        st.integers(-3, 3),
        st.sampled_from(WALL_TIMES),
        st.integers(0, 1),
    )
    return st.one_of(anywhere, edges, wall)


@dataclass(frozen=True)
class Sent:
    """An event to store: what a client sends."""

    user_id: str
    event: str
    occurred_at: datetime
    received_long_ago: bool = False  # only on the writer path, which sets received_at itself


@dataclass(frozen=True)
class Store:
    path: str  # track, batch, batch-ndjson, import, writer
    events: tuple[Sent, ...]
    order: tuple[int, ...] = ()  # writer: the order the rows are given in
    chunk_size: int = 1000  # import


@dataclass(frozen=True)
class Purge:
    batch_size: int | None


@dataclass(frozen=True)
class Delete:
    kind: str  # user, event, before
    value: object


@dataclass(frozen=True)
class Scenario:
    zone: str
    anchor: datetime
    steps: tuple = ()
    queries: tuple[Query, ...] = ()


WRITE_PATHS = ("track", "batch", "batch", "batch-ndjson", "writer", "writer", "writer", "import")


@st.composite
def scenarios(draw) -> Scenario:
    zone, anchor = draw(st.sampled_from(ANCHORS))
    fresh = instants_near(zone, anchor)
    pool = draw(st.lists(fresh, min_size=1, max_size=3))
    pool.append(pool[0] + timedelta(seconds=2.5))  # durations ending in .5 s
    pool.append(pool[0] + timedelta(milliseconds=500))
    instant = st.one_of(st.sampled_from(pool), fresh)
    # u1 more often than the others, so that its plays and stops meet at shared instants.
    sent = st.builds(
        Sent,
        st.sampled_from(("u1",) + USERS),
        st.one_of(st.sampled_from(("play", "stop")), st.sampled_from(EVENT_NAMES)),
        instant,
    )

    steps = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(("store",) * 6 + ("purge", "delete")))
        if kind == "store" or not steps:
            path = draw(st.sampled_from(WRITE_PATHS))
            events = draw(st.lists(sent, min_size=1, max_size=10))
            order, chunk_size = (), 1000
            if path == "writer":
                events = [
                    Sent(e.user_id, e.event, e.occurred_at, draw(st.booleans())) for e in events
                ]
                order = tuple(draw(st.permutations(range(len(events)))))
            elif path == "import":
                chunk_size = draw(st.sampled_from((2, 1000)))
            steps.append(Store(path, tuple(events), order, chunk_size))
        elif kind == "purge":
            steps.append(Purge(draw(st.sampled_from((None, 1, 3)))))
        else:
            what = draw(st.sampled_from(("user", "event", "before")))
            value = draw(
                {
                    "user": st.sampled_from(USERS),
                    "event": st.sampled_from(EVENT_NAMES),
                    "before": instant,
                }[what]
            )
            steps.append(Delete(what, value))

    local_day = anchor.astimezone(ZoneInfo(zone)).date()
    queries = []
    for _ in range(draw(st.integers(1, 3))):
        group_by = draw(st.sampled_from(GROUP_BYS))
        start = local_day + timedelta(days=draw(st.integers(-5, 3)))
        longest = 6 if group_by in ("hour", "day") else 45
        end = start + timedelta(days=draw(st.integers(0, longest)))
        week_start = draw(
            st.one_of(
                st.none(),
                st.sampled_from(WEEKDAYS).flatmap(
                    lambda day: st.sampled_from((day, day.upper(), day.capitalize()))
                ),
            )
        )
        queries.append(
            Query(
                start=start,
                end=end,
                group_by=group_by,
                tz=draw(st.one_of(st.just(zone), st.sampled_from(QUERY_ZONES), st.none())),
                week_start=week_start,
                fill=draw(st.sampled_from((None, "none", "zero"))),
                events=tuple(
                    draw(st.lists(st.sampled_from(EVENT_NAMES + ("never-sent",)), max_size=3))
                ),
                user_id=draw(st.one_of(st.none(), st.sampled_from(USERS + ("nobody",)))),
            )
        )
    return Scenario(zone, anchor, tuple(steps), tuple(queries))


# --- storage -----------------------------------------------------------------------------------

LONG_AGO = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)  # received_at of events due for the purge
CUTOFF = datetime(2010, 1, 1, tzinfo=UTC)  # every other event is received now


def iso_text(at: datetime, index: int, zone: str) -> str:
    """A timestamp as a client sends it: ISO 8601 with Z or an offset (the history's zone's,
    or Kathmandu's +05:45)."""
    if index % 3 == 0:
        return at.isoformat().replace("+00:00", "Z")
    return at.astimezone(ZoneInfo(zone if index % 3 == 1 else "Asia/Kathmandu")).isoformat()


def track_item(e: Sent, index: int, zone: str) -> dict:
    return {
        "event": e.event,
        "user_id": e.user_id,
        "timestamp": iso_text(e.occurred_at, index, zone),
    }


class Harness:
    """One example's writes through the app, and the model's copy of what is stored."""

    def __init__(self, app, client, tmp: Path, zone: str):
        self.app, self.client, self.tmp, self.zone = app, client, tmp, zone
        self.engine = app.extensions["analytics.db"]["engine"]
        self.model: dict[int, StoredEvent] = {}
        self.long_ago: set[int] = set()
        with self.engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())

    def stored_rows(self) -> list[tuple]:
        with self.engine.connect() as conn:
            return conn.execute(
                select(
                    Event.id, Event.user_id, Event.event, Event.occurred_at, Event.received_at
                ).order_by(Event.id)
            ).all()

    def run(self, step) -> None:
        if isinstance(step, Store):
            self.store(step)
        elif isinstance(step, Purge):
            deleted = retention.purge_expired(
                self.engine, CUTOFF, batch_size=step.batch_size, pace=0
            )
            assert deleted == len(self.long_ago)
            for id_ in self.long_ago:
                del self.model[id_]
            self.long_ago.clear()
        else:
            if step.kind == "user":
                condition = Event.user_id == step.value
                doomed = [e.id for e in self.model.values() if e.user_id == step.value]
            elif step.kind == "event":
                condition = Event.event == step.value
                doomed = [e.id for e in self.model.values() if e.event == step.value]
            else:
                condition = Event.occurred_at < step.value
                doomed = [e.id for e in self.model.values() if e.occurred_at < step.value]
            assert writer.delete_events(self.engine, select(Event.id).where(condition)) == len(
                doomed
            )
            for id_ in doomed:
                del self.model[id_]
                self.long_ago.discard(id_)
        assert [row.id for row in self.stored_rows()] == sorted(self.model), step

    def store(self, step: Store) -> None:
        events = list(step.events)
        if step.path == "track":
            for index, e in enumerate(events):
                response = self.client.post("/track", json=track_item(e, index, self.zone))
                assert response.status_code == 200, response.get_data(as_text=True)
        elif step.path in ("batch", "batch-ndjson"):
            items = [track_item(e, index, self.zone) for index, e in enumerate(events)]
            if step.path == "batch":
                response = self.client.post("/track/batch", json={"events": items})
            else:
                response = self.client.post(
                    "/track/batch",
                    data="\n".join(json.dumps(item) for item in items) + "\n",
                    content_type="application/x-ndjson",
                )
            assert response.status_code == 200, response.get_data(as_text=True)
            body = response.get_json()
            assert (body["accepted"], body["duplicates"], body["rejected"]) == (
                len(events),
                0,
                [],
            ), body
        elif step.path == "import":
            path = self.tmp / "import.ndjson"
            path.write_text(
                "".join(
                    json.dumps(track_item(e, index, self.zone)) + "\n"
                    for index, e in enumerate(events)
                ),
                encoding="utf-8",
            )
            result = self.app.test_cli_runner().invoke(
                args=["import", str(path), "--chunk-size", str(step.chunk_size)]
            )
            assert result.exit_code == 0, result.output
        else:
            events = [events[i] for i in step.order]  # arrival unlike the generated order
            now = datetime.now(UTC)
            rows = [
                EventRow(
                    event=e.event,
                    user_id=e.user_id,
                    occurred_at=e.occurred_at,
                    received_at=LONG_AGO if e.received_long_ago else now,
                    metadata_json="null",
                )
                for e in events
            ]
            with Session(self.engine) as session:
                assert writer.store_events(session, rows) == [True] * len(rows)
        self.take_new_rows(step, events)

    def take_new_rows(self, step: Store, events: list[Sent]) -> None:
        """The new rows are the events sent, timestamps kept (to the millisecond at least);
        their ids give the arrival order, which is the order sent except between the chunks
        of an import (written by several writers at once on PostgreSQL)."""
        new = [row for row in self.stored_rows() if row.id not in self.model]
        assert len(new) == len(events)

        def key(user_id, event, occurred_at, long_ago):
            return user_id, event, long_ago, occurred_at

        sent = sorted(key(e.user_id, e.event, e.occurred_at, e.received_long_ago) for e in events)
        got = sorted(key(r.user_id, r.event, r.occurred_at, r.received_at < CUTOFF) for r in new)
        for a, b in zip(sent, got):
            assert a[:3] == b[:3] and abs(a[3] - b[3]) < timedelta(milliseconds=1), (a, b)
        if step.path != "import" or step.chunk_size >= len(events):
            assert [(r.user_id, r.event) for r in new] == [(e.user_id, e.event) for e in events]
        for r in new:
            self.model[r.id] = StoredEvent(r.id, r.user_id, r.event, r.occurred_at)
            if r.received_at < CUTOFF:
                self.long_ago.add(r.id)


# --- comparison --------------------------------------------------------------------------------


def assert_integers(data: list[dict]) -> None:
    for row in data:
        for key, value in row.items():
            if key != "date":
                assert type(value) is int, (key, value)


def check_endpoints(client, events: list[StoredEvent], query: Query) -> None:
    """Every endpoint answers exactly what the model says for ``events`` and ``query``."""
    for path, model, with_events in (
        ("/metrics", model_metrics, True),
        ("/sessions", model_sessions, False),
        ("/active-users", model_active_users, True),
    ):
        query_without = query
        if not with_events and query.events:
            query_without = Query(**{**query_without.__dict__, "events": ()})
        if path == "/active-users" and query.user_id is not None:
            query_without = Query(**{**query_without.__dict__, "user_id": None})
        response = client.get(f"{path}?{query_without.query_string(with_events)}")
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["status"] == "success"
        assert_integers(body["data"])
        assert body["data"] == model(events, query_without), (path, query_without)


@pytest.mark.slow
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # The fixtures only hand over an app and a client: every example empties the tables
    # before it stores anything.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(scenario=scenarios())
def test_every_per_period_endpoint_agrees_with_the_model(app, client, scenario):
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(app, client, Path(tmp), scenario.zone)
        for step in scenario.steps:
            harness.run(step)
    events = list(harness.model.values())
    for query in scenario.queries:
        check_endpoints(client, events, query)


# --- the model itself, on the contract's own examples ------------------------------------------


def _history(*items: tuple[str, str, str]) -> list[StoredEvent]:
    return [
        StoredEvent(index, user, name, datetime.fromisoformat(at).astimezone(UTC))
        for index, (user, name, at) in enumerate(items, start=1)
    ]


def test_the_model_pairs_as_the_contract_lists():
    def sessions_of(*names):
        events = _history(
            *(("u", name, f"2025-01-01T00:00:0{i}+00:00") for i, name in enumerate(names))
        )
        return [(play.second, stop.second) for play, stop, _ in model_session_pairs(events)]

    assert sessions_of("play", "stop") == [(0, 1)]
    assert sorted(sessions_of("play", "stop", "play", "stop")) == [(0, 1), (2, 3)]
    assert sessions_of("play", "play", "stop") == [(1, 2)]
    assert sessions_of("play", "stop", "stop") == [(0, 1)]
    assert sessions_of("stop") == sessions_of("play") == []
    assert sessions_of("play", "pause", "skip", "stop") == [(0, 3)]
    # Equal timestamps: arrival (id) decides.
    tied = _history(
        ("u", "stop", "2025-01-01T00:00:00+00:00"),
        ("u", "play", "2025-01-01T00:00:00+00:00"),
        ("u", "stop", "2025-01-01T00:00:01+00:00"),
    )
    assert [(p.second, s.second) for p, s, _ in model_session_pairs(tied)] == [(0, 1)]


def test_the_model_rounds_halves_up():
    events = _history(
        ("u", "play", "2025-01-01T00:00:00+00:00"),
        ("u", "stop", "2025-01-01T00:00:02.5+00:00"),
        ("u", "play", "2025-01-01T01:00:00+00:00"),
        ("u", "stop", "2025-01-01T01:00:00.5+00:00"),
    )
    assert model_sessions(events, Query(date(2025, 1, 1), date(2025, 1, 1))) == [
        {"date": "2025-01-01", "totalDuration": 3, "sessionCount": 2, "averageDuration": 2}
    ]


def test_the_model_lists_the_repeated_hour_twice_in_berlin():
    # 2024-10-27: 03:00 CEST becomes 02:00 CET; 02:30 happens at 00:30Z and at 01:30Z.
    events = _history(
        ("u", "x", "2024-10-27T02:30:00+02:00"),
        ("u", "x", "2024-10-27T02:30:00+01:00"),
        ("u", "y", "2024-10-27T02:59:59.999999+01:00"),
    )
    query = Query(date(2024, 10, 27), date(2024, 10, 27), "hour", "Europe/Berlin")
    assert model_metrics(events, query) == [
        {"date": "2024-10-27T02:00+02:00", "x": 1},
        {"date": "2024-10-27T02:00+01:00", "x": 1, "y": 1},
    ]
    filled = model_metrics(events, Query(**{**query.__dict__, "fill": "zero", "events": ("x",)}))
    assert len(filled) == 25
    assert [row["date"] for row in filled[1:5]] == [
        "2024-10-27T01:00+02:00",
        "2024-10-27T02:00+02:00",
        "2024-10-27T02:00+01:00",
        "2024-10-27T03:00+01:00",
    ]
    assert filled[0] == {"date": "2024-10-27T00:00+02:00", "x": 0}
    # The spring-forward day has no 02:00 and 23 hours.
    spring = all_periods(Query(date(2025, 3, 30), date(2025, 3, 30), "hour", "Europe/Berlin"))
    assert len(spring) == 23 and "2025-03-30T02:00+01:00" not in spring
    assert model_metrics(
        events, Query(date(2024, 10, 27), date(2024, 10, 27), "day", "Europe/Berlin")
    ) == [{"date": "2024-10-27", "x": 2, "y": 1}]


def test_the_model_labels_kathmandu_hours_with_plus_five_forty_five():
    events = _history(
        ("u", "play", "2024-12-31T18:14:59.999999+00:00"),
        ("u", "stop", "2024-12-31T18:15:00+00:00"),
        ("u", "play", "2024-12-31T18:15:00+00:00"),
        ("u", "stop", "2024-12-31T18:15:01.5+00:00"),
    )
    query = Query(date(2024, 12, 31), date(2025, 1, 1), "hour", "Asia/Kathmandu")
    assert model_metrics(events, query) == [
        {"date": "2024-12-31T23:00+05:45", "play": 1},
        {"date": "2025-01-01T00:00+05:45", "stop": 2, "play": 1},
    ]
    assert model_sessions(events, query) == [
        {
            "date": "2024-12-31T23:00+05:45",
            "totalDuration": 0,
            "sessionCount": 1,
            "averageDuration": 0,
        },
        {
            "date": "2025-01-01T00:00+05:45",
            "totalDuration": 2,
            "sessionCount": 1,
            "averageDuration": 2,
        },
    ]
    assert model_metrics(
        events, Query(date(2025, 1, 1), date(2025, 1, 1), "day", "Asia/Kathmandu")
    ) == [{"date": "2025-01-01", "stop": 2, "play": 1}]
    labels = all_periods(Query(date(2025, 1, 1), date(2025, 1, 1), "hour", "Asia/Kathmandu"))
    assert labels[0] == "2025-01-01T00:00+05:45" and len(labels) == 24


def test_the_model_starts_weeks_on_the_day_asked_for():
    events = _history(
        ("u", "x", "2025-01-04T12:00:00+00:00"),  # a Saturday
        ("u", "x", "2025-01-05T12:00:00+00:00"),
    )  # a Sunday
    assert model_metrics(
        events, Query(date(2025, 1, 1), date(2025, 1, 10), "week", week_start="SunDay")
    ) == [{"date": "2024-12-29", "x": 1}, {"date": "2025-01-05", "x": 1}]
    assert model_metrics(events, Query(date(2025, 1, 1), date(2025, 1, 10), "week")) == [
        {"date": "2024-12-30", "x": 2}
    ]
