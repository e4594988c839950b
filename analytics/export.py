"""Reading stored events out, oldest first, as NDJSON lines or CSV records, in flat memory.

The rows come from a server-side cursor (``stream_results``) a few thousand at a time, each
formatted by the database into the texts of the export (times, compact metadata), so that a
row costs Python no more than joining strings; CSV records are written by the csv module in C.
Plain functions of an Engine: no Flask.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Engine, Select, or_, select

from analytics.dialects import compact_json_text, iso_utc_text
from analytics.models import Event
from analytics.periods import EPOCH, bucket_start, local_periods

FORMATS = ("ndjson", "csv")
MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_HEADER = ("timestamp", "event", "user_id", "event_id", "received_at", "metadata")
# Rows fetched from the cursor at a time, and so formatted into one chunk of the answer: small
# enough that the first bytes leave at once and memory stays flat, large enough that a fetch's
# round trip is paid rarely.
ROWS_PER_CHUNK = 2000

_events = Event.__table__
# The columns in CSV_HEADER order, each already the text of the export (None: absent).
_COLUMNS = (iso_utc_text(_events.c.occurred_at), _events.c.event, _events.c.user_id,
            _events.c.event_id, iso_utc_text(_events.c.received_at),
            compact_json_text(_events.c.metadata))


@dataclass(frozen=True)
class EventFilter:
    """Which events an export holds: a range of UTC instants [start, end) (None: unbounded),
    only these event names (empty: all), one user (None: all)."""

    start: datetime | None = None
    end: datetime | None = None
    events: tuple[str, ...] = ()
    user_id: str | None = None


def local_range(start: date, end: date, zone_name: str) -> tuple[datetime, datetime]:
    """The UTC instants [lo, hi) of the local dates ``start`` to ``end`` in the zone, as
    /metrics counts them (lo == hi when no instant has such a local date)."""
    # The first and last three days are enough to find the ends: no zone skips three days.
    first = local_periods(start, min(end, date.fromordinal(start.toordinal() + 2)), zone_name)
    last = local_periods(max(start, date.fromordinal(end.toordinal() - 2)), end, zone_name)
    if not first.labels or not last.labels:
        return EPOCH, EPOCH
    return bucket_start(first.bounds[0]), bucket_start(last.bounds[-1])


def select_events(chosen: EventFilter) -> Select:
    """The export's rows of the chosen events, oldest first (by timestamp, then arrival)."""
    statement = select(*_COLUMNS).order_by(_events.c.occurred_at, _events.c.id)
    if chosen.start is not None:
        statement = statement.where(_events.c.occurred_at >= chosen.start)
    if chosen.end is not None:
        statement = statement.where(_events.c.occurred_at < chosen.end)
    if chosen.events:
        statement = statement.where(or_(*(_events.c.event == name for name in chosen.events)))
    if chosen.user_id is not None:
        statement = statement.where(_events.c.user_id == chosen.user_id)
    return statement


def fetch_rows(engine: Engine, statement: Select) -> Iterator[list[tuple]]:
    """The statement's rows, ROWS_PER_CHUNK at a time, from a server-side cursor. The
    connection is returned when the iterator is exhausted or closed."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=ROWS_PER_CHUNK
                                        ).execute(statement)
        try:
            yield from result.partitions()
        finally:
            result.close()  # the server-side cursor, before its connection goes back


_string = json.encoder.encode_basestring  # JSON string literal, non-ASCII kept as is


def ndjson_chunk(rows: list[tuple]) -> bytes:
    """One JSON object a line per row: event, user_id, timestamp, metadata, event_id,
    received_at (absent values as null)."""
    lines = []
    for timestamp, event, user_id, event_id, received_at, metadata in rows:
        lines.append(
            f'{{"event":{_string(event)},"user_id":{_string(user_id)},'
            f'"timestamp":"{timestamp}","metadata":{metadata or "null"},'
            f'"event_id":{"null" if event_id is None else _string(event_id)},'
            f'"received_at":"{received_at}"}}\n')
    return "".join(lines).encode()


def csv_header() -> bytes:
    return _csv_records([CSV_HEADER])


def csv_chunk(rows: list[tuple]) -> bytes:
    """RFC 4180 records (CRLF, quoted where needed) in CSV_HEADER order; absent: empty."""
    return _csv_records(rows)


def _csv_records(rows) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


def export_chunks(engine: Engine, chosen: EventFilter, fmt: str) -> Iterator[bytes]:
    """The export of the chosen events in ``fmt`` (one of FORMATS), chunk by chunk. The query
    runs and the first rows are read before the first chunk is returned, so a failing
    database is noticed while an error can still be answered."""
    batches = fetch_rows(engine, select_events(chosen))
    try:
        first = next(batches, [])
    except BaseException:
        batches.close()
        raise
    return _chunks(batches, first, fmt)


def _chunks(batches: Iterator[list[tuple]], first: list[tuple], fmt: str) -> Iterator[bytes]:
    format_rows = csv_chunk if fmt == "csv" else ndjson_chunk
    try:
        if fmt == "csv":
            yield csv_header()
        if first:
            yield format_rows(first)
        for rows in batches:
            yield format_rows(rows)
    finally:
        batches.close()
