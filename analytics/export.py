"""Reading stored events out, oldest first, as NDJSON lines or CSV records, in flat memory.

The rows come from a server-side cursor a few thousand at a time, as the driver's tuples of
text (each database writes the times in UTC as cheaply as it can, and metadata as compact
JSON), and each chunk is formatted column by column, then one f-string a row. Plain functions
of an Engine: no Flask.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, Select, or_, select

from analytics.dialects import compact_json_text, utc_text
from analytics.models import Event, table_of
from analytics.periods import EPOCH, bucket_start, local_periods

FORMATS = ("ndjson", "csv")
MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_HEADER = ("timestamp", "event", "user_id", "event_id", "received_at", "metadata")
# Rows fetched from the cursor at a time, and so formatted into one chunk of the answer: small
# enough that the first bytes leave at once and memory stays flat, large enough that a fetch's
# round trip is paid rarely.
ROWS_PER_CHUNK = 2000

_events = table_of(Event)
# The columns in CSV_HEADER order, as text (None: absent).
_COLUMNS = (
    utc_text(_events.c.occurred_at),
    _events.c.event,
    _events.c.user_id,
    _events.c.event_id,
    utc_text(_events.c.received_at),
    compact_json_text(_events.c.metadata),
)


@dataclass(frozen=True)
class EventFilter:
    """Which events an export holds: a range of UTC instants [start, end) (None: unbounded),
    only these event names (empty: all), one user (None: all)."""

    start: datetime | None = None
    end: datetime | None = None
    events: tuple[str, ...] = ()
    user_id: str | None = None


def local_range(start: date, end: date, zone_name: str) -> tuple[datetime | None, datetime | None]:
    """The UTC instants [lo, hi) of the local dates ``start`` to ``end`` in the zone, as
    /metrics counts them (lo == hi when no instant has such a local date; None: unbounded, at
    the end of the calendar)."""
    # The first and last three days are enough to find the ends: no zone skips three days.
    # The local days of the last days of year 9999 reach past what a datetime can hold.
    near_end = date.max.toordinal() - 2
    if start.toordinal() < near_end:
        first = local_periods(start, _day(min(end.toordinal(), start.toordinal() + 2)), zone_name)
        if not first.labels:
            return EPOCH, EPOCH
        lo = bucket_start(first.bounds[0])
    else:  # where the day before ends
        lo = bucket_start(
            local_periods(
                _day(start.toordinal() - 3), _day(start.toordinal() - 1), zone_name
            ).bounds[-1]
        )
    if end.toordinal() >= near_end:
        return lo, None
    last = local_periods(_day(max(start.toordinal(), end.toordinal() - 2)), end, zone_name)
    if not last.labels:
        return EPOCH, EPOCH
    return lo, bucket_start(last.bounds[-1])


def _day(ordinal: int) -> date:
    return date.fromordinal(ordinal)


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


def fetch_rows(engine: Engine, statement: Select[Any]) -> Generator[list[tuple]]:
    """The statement's rows as the driver's plain tuples, ROWS_PER_CHUNK at a time, from a
    server-side cursor. The connection is returned when the iterator is exhausted or closed."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(statement)
        try:
            # SQLAlchemy reads one row ahead (to learn the columns); that row is taken through
            # it, and the rest straight from the driver's cursor: a Row object per row costs
            # about as much as formatting the row (docs/decisions.md).
            cursor = result.cursor
            first = [tuple(row) for row in result.fetchmany(1)]
            if not first:
                return
            yield first + list(cursor.fetchmany(ROWS_PER_CHUNK - 1))
            while rows := cursor.fetchmany(ROWS_PER_CHUNK):
                yield list(rows)
        finally:
            result.close()  # the server-side cursor, before its connection goes back


# The formatters work a chunk's columns before its rows: the times of a whole column are
# rewritten by three string methods over the column joined into one string, and the names are
# escaped by a map of a C function, which costs a fraction of the same steps in Python a row at
# a time (docs/decisions.md). Each row is then one f-string.
_string = json.encoder.encode_basestring  # JSON string literal, non-ASCII kept as is
_NEEDS_QUOTES = re.compile('[",\r\n]').search


# What a time's text (dialects.utc_text) lacks, by its length, to have six digits of fraction.
_FRACTION_PADDING = {19: ".000000", 21: "00000", 22: "0000", 23: "000", 24: "00", 25: "0", 26: ""}


def _iso_times(texts: Sequence[str]) -> list[str]:
    """Times as dialects.utc_text writes them, as ISO 8601 with milliseconds and ``Z``, with
    the microseconds too where there are any: nothing stored is lost, and a re-import pairs
    sessions to the microsecond. "000Z" can only be a time's end."""
    padded = "Z\n".join([text + _FRACTION_PADDING[len(text)] for text in texts])
    return (padded + "Z").replace(" ", "T").replace("000Z", "Z").split("\n")


def ndjson_chunk(rows: list[tuple]) -> bytes:
    """One JSON object a line per row: event, user_id, timestamp, metadata, event_id,
    received_at (absent values as null)."""
    if not rows:
        return b""
    occurred_at, events, user_ids, event_ids, received_at, metadata = zip(*rows)
    return "".join(
        [
            f'{{"event":{event},"user_id":{user_id},"timestamp":"{occurred}",'
            f'"metadata":{"null" if document is None else document},'
            f'"event_id":{"null" if event_id is None else _string(event_id)},'
            f'"received_at":"{received}"}}\n'
            for event, user_id, occurred, document, event_id, received in zip(
                map(_string, events),
                map(_string, user_ids),
                _iso_times(occurred_at),
                metadata,
                event_ids,
                _iso_times(received_at),
            )
        ]
    ).encode()


def _csv_field(text: str) -> str:
    """RFC 4180: quoted (with its quotes doubled) when it holds a quote, comma or line break."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if _NEEDS_QUOTES(text) else text


def _csv_fields(texts: Sequence[str]) -> Sequence[str]:
    """A column of names or ids as fields: they seldom need quotes, so one search over the
    whole column decides for all of them."""
    return list(map(_csv_field, texts)) if _NEEDS_QUOTES("".join(texts)) else texts


def csv_header() -> bytes:
    return (",".join(CSV_HEADER) + "\r\n").encode()


def csv_chunk(rows: list[tuple]) -> bytes:
    """RFC 4180 records with CRLF line ends, in CSV_HEADER order; an absent value is an empty
    field."""
    if not rows:
        return b""
    occurred_at, events, user_ids, event_ids, received_at, metadata = zip(*rows)
    return "".join(
        [
            f"{occurred},{event},{user_id},{event_id},{received},"
            f"{'' if document is None else _csv_field(document)}\r\n"
            for occurred, event, user_id, event_id, received, document in zip(
                _iso_times(occurred_at),
                _csv_fields(events),
                _csv_fields(user_ids),
                _csv_fields(["" if event_id is None else event_id for event_id in event_ids]),
                _iso_times(received_at),
                metadata,
            )
        ]
    ).encode()


class _ReadAhead:
    """The batches of ``fetch_rows``, read by a thread of their own one batch ahead, so that
    the database's work on the next batch (and the driver's, which releases the GIL while it
    waits) overlaps Python's on this one. At most AHEAD batches wait in memory."""

    AHEAD = 2
    _END = object()

    def __init__(self, engine: Engine, statement: Select):
        self._queue: queue.Queue = queue.Queue(maxsize=self.AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(engine, statement), name="export-reader", daemon=True
        )
        self._thread.start()

    def _read(self, engine: Engine, statement: Select) -> None:
        try:
            batches = fetch_rows(engine, statement)
            try:
                for rows in batches:
                    if not self._offer(rows):
                        return
            finally:
                batches.close()
            self._offer(self._END)
        except BaseException as exc:  # handed to the reader of the batches
            self._offer(exc)

    def _offer(self, item: object) -> bool:
        """Queue ``item`` once there is room; False when the batches were closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[list[tuple]]:
        while (item := self._queue.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading and give the connection back (when the client goes away, too)."""
        self._stop.set()
        self._thread.join()


def export_chunks(engine: Engine, chosen: EventFilter, fmt: str) -> Iterator[bytes]:
    """The export of the chosen events in ``fmt`` (one of FORMATS), chunk by chunk. The query
    runs and the first rows are read before the first chunk is returned, so a failing
    database is noticed while an error can still be answered."""
    reader = _ReadAhead(engine, select_events(chosen))
    batches = iter(reader)
    try:
        first = next(batches, [])
    except BaseException:
        reader.close()
        raise
    return _chunks(reader, batches, first, fmt)


def _chunks(
    reader: _ReadAhead, batches: Iterator[list[tuple]], first: list[tuple], fmt: str
) -> Iterator[bytes]:
    format_rows = csv_chunk if fmt == "csv" else ndjson_chunk
    try:
        if fmt == "csv":
            yield csv_header()
        if first:
            yield format_rows(first)
        for rows in batches:
            yield format_rows(rows)
    finally:
        reader.close()
