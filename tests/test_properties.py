"""GET /metrics and GET /sessions agree with a small pure-Python model of the contract, for
generated histories (several users, interleaved play/stop/pause/other events, equal timestamps,
arrival order unlike timestamp order) and generated queries (ranges that cut through sessions,
every group_by, with and without user_id), on every backend.

The pieces are module-level so that other implementations of the two endpoints can be checked
against the same model with the same generators: ``histories()`` and ``period_queries()``
generate input, ``store_events`` writes a history, ``model_metrics`` / ``model_sessions`` say
what the contract answers, and ``check_endpoints`` compares the two through the HTTP client.
"""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from fractions import Fraction
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from analytics import rollups
from analytics.models import Base, Event

UTC = timezone.utc
GROUP_BYS = ("day", "week", "month")

# A few hundred histories per backend by default; raise it to search harder locally.
MAX_EXAMPLES = int(os.environ.get("ANALYTICS_PROPERTY_EXAMPLES", "200"))


# --- the model: the contract, written as plainly as possible ---------------------------------

@dataclass(frozen=True)
class StoredEvent:
    """One event as stored; ``id`` is its arrival order."""

    id: int
    user_id: str
    event: str
    occurred_at: datetime  # aware, UTC


def period_label(moment: datetime, group_by: str) -> str:
    day = moment.astimezone(UTC).date()
    if group_by == "week":
        day -= timedelta(days=day.weekday())  # ISO weeks start on Monday
    elif group_by == "month":
        day = day.replace(day=1)
    return day.isoformat()


def in_range(moment: datetime, start: date, end: date) -> bool:
    """start 00:00:00Z <= t < (end + 1 day) 00:00:00Z."""
    return start <= moment.astimezone(UTC).date() <= end


def round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def model_metrics(events: list[StoredEvent], start: date, end: date, group_by: str = "day",
                  user_id: str | None = None) -> list[dict]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for e in events:
        if in_range(e.occurred_at, start, end) and user_id in (None, e.user_id):
            counts[period_label(e.occurred_at, group_by)][e.event] += 1
    return [{"date": label, **counts[label]} for label in sorted(counts)]


def model_session_pairs(events: list[StoredEvent]) -> list[tuple[datetime, datetime, str]]:
    """(play time, stop time, user) of every session in the whole history.

    For each stop, the user's most recent earlier play-or-stop event (by timestamp, then
    arrival); when that is a play, the two make a session.
    """
    pairs = []
    for user in {e.user_id for e in events}:
        sequence = sorted((e for e in events if e.user_id == user and e.event in ("play", "stop")),
                          key=lambda e: (e.occurred_at, e.id))
        for previous, current in zip(sequence, sequence[1:]):
            if current.event == "stop" and previous.event == "play":
                pairs.append((previous.occurred_at, current.occurred_at, user))
    return pairs


def model_sessions(events: list[StoredEvent], start: date, end: date, group_by: str = "day",
                   user_id: str | None = None) -> list[dict]:
    durations: dict[str, list[timedelta]] = defaultdict(list)
    for play_at, stop_at, user in model_session_pairs(events):
        if in_range(play_at, start, end) and user_id in (None, user):
            durations[period_label(play_at, group_by)].append(stop_at - play_at)
    data = []
    for label in sorted(durations):
        total = sum(durations[label], timedelta())
        seconds = Fraction(total // timedelta(microseconds=1), 1_000_000)
        count = len(durations[label])
        data.append({"date": label, "totalDuration": round_half_up(seconds),
                     "sessionCount": count, "averageDuration": round_half_up(seconds / count)})
    return data


# --- generators --------------------------------------------------------------------------------

USERS = ("u1", "u2", "u3")
OTHER_EVENTS = ("pause", "skip", "Play", "STOP", "status", "__proto__")
FIRST_DAY = date(2024, 12, 24)  # a Tuesday; the days around a year's and a month's end
LAST_DAY = date(2025, 1, 11)

# Instants that many generated events share: equal timestamps, the edges of days, ISO weeks
# (2024-12-29 is a Sunday, 2024-12-30 a Monday) and months, and durations ending in .5 s.
_SHARED_DAYS = (date(2024, 12, 29), date(2024, 12, 30), date(2025, 1, 1), date(2025, 1, 5))
_SHARED_TIMES = (time(0, 0), time(12, 0), time(12, 0, 0, 500_000), time(12, 0, 1, 500_000),
                 time(12, 0, 2, 499_999), time(23, 59, 59, 999_999))
SHARED_INSTANTS = tuple(datetime.combine(d, t, tzinfo=UTC)
                        for d in _SHARED_DAYS for t in _SHARED_TIMES)


def instants() -> st.SearchStrategy[datetime]:
    """UTC instants to the microsecond, often one of a few shared ones."""
    anywhere = st.builds(
        lambda day, microsecond: datetime.combine(day, time.min, tzinfo=UTC)
        + timedelta(microseconds=microsecond),
        st.dates(FIRST_DAY, LAST_DAY),
        st.integers(0, 86_400_000_000 - 1),
    )
    return st.one_of(st.sampled_from(SHARED_INSTANTS), anywhere)


def event_names() -> st.SearchStrategy[str]:
    """play and stop half of the time, other names (lookalikes included) otherwise."""
    return st.one_of(st.sampled_from(("play", "stop")), st.sampled_from(OTHER_EVENTS))


def histories(max_size: int = 40) -> st.SearchStrategy[list[StoredEvent]]:
    """Events in arrival order (ids 1, 2, ...), their timestamps in any order."""
    return st.lists(st.tuples(st.sampled_from(USERS), event_names(), instants()),
                    max_size=max_size).map(
        lambda items: [StoredEvent(id=index, user_id=user, event=name, occurred_at=moment)
                       for index, (user, name, moment) in enumerate(items, start=1)])


@dataclass(frozen=True)
class PeriodQuery:
    start: date
    end: date
    group_by: str
    user_id: str | None

    def query_string(self) -> str:
        params = {"start_date": self.start.isoformat(), "end_date": self.end.isoformat(),
                  "group_by": self.group_by}
        if self.user_id is not None:
            params["user_id"] = self.user_id
        return urlencode(params)


def period_queries() -> st.SearchStrategy[PeriodQuery]:
    """Valid queries whose ranges start and end anywhere around the generated events."""
    days = st.dates(FIRST_DAY - timedelta(days=2), LAST_DAY + timedelta(days=2))
    return st.builds(
        lambda a, b, group_by, user_id: PeriodQuery(min(a, b), max(a, b), group_by, user_id),
        days, days, st.sampled_from(GROUP_BYS),
        st.one_of(st.none(), st.sampled_from(USERS + ("nobody",))),
    )


# --- storage and comparison --------------------------------------------------------------------

RECEIVED_AT = datetime(2025, 1, 12, tzinfo=UTC)


def store_events(engine, events: list[StoredEvent]) -> None:
    """Replace the table's content with ``events``, ids as given (they are the arrival order).

    The rows are written last id first, so that a query that relied on the physical order of
    rows instead of ordering by id would break ties between equal timestamps the wrong way.
    """
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    # In chunks, each in its own transaction and followed by the same aggregate maintenance as
    # the API's inserts, so that the daily counts that answer all-users queries are built
    # incrementally from events arriving out of order (ids descending, timestamps shuffled).
    ordered = sorted(events, key=lambda e: e.id, reverse=True)
    for start in range(0, len(ordered), 7):
        chunk = ordered[start:start + 7]
        with engine.begin() as conn:
            conn.execute(insert(Event), [
                {"id": e.id, "event": e.event, "user_id": e.user_id,
                 "occurred_at": e.occurred_at, "received_at": RECEIVED_AT} for e in chunk])
            rollups.record_changes(conn, added=[
                rollups.Change(e.occurred_at, e.id, e.event, e.user_id) for e in chunk])


def assert_integers(data: list[dict]) -> None:
    for row in data:
        for key, value in row.items():
            if key != "date":
                assert type(value) is int, (key, value)


def check_endpoints(client, events: list[StoredEvent], query: PeriodQuery) -> None:
    """Both endpoints answer exactly what the model says for ``events`` and ``query``."""
    args = (events, query.start, query.end, query.group_by, query.user_id)
    for path, model in (("/metrics", model_metrics), ("/sessions", model_sessions)):
        response = client.get(f"{path}?{query.query_string()}")
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["status"] == "success"
        assert_integers(body["data"])
        assert body["data"] == model(*args), (path, query)


@settings(max_examples=MAX_EXAMPLES, deadline=None,
          # The fixtures only hand over a client and an engine: every example replaces the
          # table's whole content before it queries.
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=histories(), queries=st.lists(period_queries(), min_size=1, max_size=3))
def test_metrics_and_sessions_agree_with_the_model(client, engine, events, queries):
    store_events(engine, events)
    for query in queries:
        check_endpoints(client, events, query)


# --- the model itself, on the contract's own examples ------------------------------------------

def _history(*items: tuple[str, str, str]) -> list[StoredEvent]:
    return [StoredEvent(index, user, name, datetime.fromisoformat(at).replace(tzinfo=UTC))
            for index, (user, name, at) in enumerate(items, start=1)]


def test_the_model_pairs_as_the_contract_lists():
    def sessions_of(*names):
        events = _history(*(("u", name, f"2025-01-01T00:00:0{i}") for i, name in
                            enumerate(names)))
        return [(play.second, stop.second) for play, stop, _ in model_session_pairs(events)]

    assert sessions_of("play", "stop") == [(0, 1)]
    assert sorted(sessions_of("play", "stop", "play", "stop")) == [(0, 1), (2, 3)]
    assert sessions_of("play", "play", "stop") == [(1, 2)]
    assert sessions_of("play", "stop", "stop") == [(0, 1)]
    assert sessions_of("stop") == sessions_of("play") == []
    assert sessions_of("play", "pause", "skip", "stop") == [(0, 3)]


def test_the_model_rounds_halves_up():
    events = _history(("u", "play", "2025-01-01T00:00:00"), ("u", "stop", "2025-01-01T00:00:02.5"),
                      ("u", "play", "2025-01-01T01:00:00"), ("u", "stop", "2025-01-01T01:00:00.5"))
    assert model_sessions(events, date(2025, 1, 1), date(2025, 1, 1)) == [
        {"date": "2025-01-01", "totalDuration": 3, "sessionCount": 2, "averageDuration": 2}]
