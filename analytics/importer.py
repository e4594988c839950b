"""Bulk import of events from NDJSON or CSV files, for ``flask --app wsgi import``.

Lines are read, checked by the POST /track rules and stored in chunks, each chunk one committed
transaction (see ``writer``). Events that carry an ``event_id`` are stored once however often they
are imported, so an interrupted import is resumed by running it again on the same file.

NDJSON: one event object a line; blank lines are skipped. CSV: a header row naming the columns
``event``, ``user_id`` (required), ``timestamp``, ``event_id``, ``metadata`` (a JSON object as
text) and ``received_at``, in any order; other columns are ignored; an empty cell means the field
is absent. A ``received_at`` (as GET /events exports it) is kept, so that an imported export is
kept as long as the original events would have been.
No Flask in here: the command passes a Session and the settings.
"""

from __future__ import annotations

import csv
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import BinaryIO

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from analytics import validation, writer
from analytics.errors import APIError, is_unreachable
from analytics.ingest import parse_timestamp
from analytics.inputs import loads_strict
from analytics.models import utcnow
from analytics.schemas import json_text_is_nul_free

FORMATS = ("ndjson", "csv")
EXTENSIONS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv"}
CSV_REQUIRED = ("event", "user_id")
CSV_OPTIONAL = ("timestamp", "event_id", "metadata", "received_at")
DEFAULT_CHUNK_SIZE = 1000
NOT_UTF8 = "Line is not valid UTF-8"
RECEIVED_AT_INVALID = "received_at must be an ISO 8601 date and time, e.g. 2025-01-18T14:30:00.000Z"


class UnusableInput(Exception):
    """The input cannot be imported at all (e.g. a CSV header without the required columns)."""


def guess_format(name: str) -> str | None:
    """ndjson or csv from a file name's extension (``.gz`` looked through), else None."""
    lowered = name.lower()
    if lowered.endswith(".gz"):
        lowered = lowered[:-3]
    for extension, fmt in EXTENSIONS.items():
        if lowered.endswith(extension):
            return fmt
    return None


@dataclass
class Line:
    """One input record: where it starts, what it holds (or why it is unreadable)."""

    number: int
    item: object
    nul_free: bool = False  # no string in item can contain U+0000 (schemas.json_text_is_nul_free)


def read_ndjson(stream: BinaryIO) -> Iterator[Line]:
    """Each non-blank line, parsed; an unparseable one as ``validation.Unreadable``."""
    for number, raw in enumerate(stream, start=1):
        raw = raw.strip()
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:].strip()
        if not raw:
            continue
        try:
            item = loads_strict(raw)
        except APIError:
            item = validation.Unreadable(
                NOT_UTF8 if not _is_utf8(raw) else validation.MALFORMED_JSON
            )
        yield Line(number, item, json_text_is_nul_free(raw))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class _CountingLines:
    """Text lines of a binary stream, counting them, for the csv module to read."""

    def __init__(self, stream: BinaryIO):
        self._lines = iter(stream)
        self.count = 0

    def __iter__(self) -> _CountingLines:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        self.count += 1
        if self.count == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        # Undecodable bytes become lone surrogates, found below, so that one bad line is
        # rejected without losing track of where the next record starts.
        return raw.decode("utf-8", errors="surrogateescape")


def _has_surrogates(values: Iterable[str]) -> bool:
    return any(any("\udc80" <= ch <= "\udcff" for ch in value) for value in values)


def read_csv(stream: BinaryIO) -> Iterator[Line]:
    """Each data record as an event dict (or ``validation.Unreadable``), numbered by its first
    line."""
    lines = _CountingLines(stream)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    columns = [name.strip().lower() for name in header]
    missing = [name for name in CSV_REQUIRED if name not in columns]
    if missing:
        raise UnusableInput(
            f"the CSV header (line 1) must name the columns "
            f"{', '.join(CSV_REQUIRED)}; missing: {', '.join(missing)}"
        )
    wanted = [
        (position, name)
        for position, name in enumerate(columns)
        if name in CSV_REQUIRED + CSV_OPTIONAL
    ]
    end_of_previous = lines.count
    for values in reader:
        number, end_of_previous = end_of_previous + 1, lines.count
        if not values:  # a blank line
            continue
        yield Line(number, _csv_item(values, columns, wanted))


def _csv_item(
    values: list[str], columns: list[str], wanted: list[tuple[int, str]]
) -> dict[str, str] | validation.Unreadable:
    if len(values) != len(columns):
        return validation.Unreadable(f"Expected {len(columns)} columns, found {len(values)}")
    if _has_surrogates(values):
        return validation.Unreadable(NOT_UTF8)
    # An empty cell is an absent field (so an empty user_id is "user_id is required").
    item = {name: values[position] for position, name in wanted if values[position] != ""}
    if "metadata" in item:
        try:
            item["metadata"] = loads_strict(item["metadata"])
        except APIError:
            return validation.Unreadable("metadata is not valid JSON")
    return item


@dataclass
class ImportSummary:
    """What happened to the lines read so far."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    last_line: int = 0


@dataclass
class Importer:
    """Reads lines, stores them chunk by chunk, and reports rejected lines as it goes.

    Each chunk is one committed transaction. While chunks are being written, the next is read
    and checked: the database's work (in the server for PostgreSQL, in SQLite's C code, which
    runs without the GIL) overlaps the Python work of checking. With ``writers`` > 1, that many
    chunks are written at once, each by its own thread and connection (on PostgreSQL one
    chunk's events go in while the previous chunk's sessions are being paired); with one
    writer, chunks are committed one at a time, in file order.
    """

    session: Session
    metadata_limit: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    writers: int = 1
    on_rejected: Callable[[int, str], None] = lambda number, message: None
    on_chunk: Callable[[ImportSummary], None] = lambda summary: None
    summary: ImportSummary = field(default_factory=ImportSummary)

    def run(self, lines: Iterable[Line]) -> ImportSummary:
        # Each session is only ever used by one writer thread at a time while run() lasts.
        sessions: queue.SimpleQueue = queue.SimpleQueue()
        sessions.put(self.session)
        extra = [
            Session(self.session.get_bind(), expire_on_commit=False)
            for _ in range(self.writers - 1)
        ]
        for session in extra:
            sessions.put(session)
        try:
            with ThreadPoolExecutor(self.writers, thread_name_prefix="import-writer") as pool:
                # Each chunk is checked here (while the writers write the ones before it) and
                # handed to a writer once one is free.
                work = (
                    (
                        partial(pool.submit, self._write, self._check(chunk), sessions),
                        chunk[-1].number,
                    )
                    for chunk in _chunks(lines, self.chunk_size)
                )
                _InOrder(self.summary, self.on_rejected, self.on_chunk).drive(work, self.writers)
        finally:
            for session in extra:
                session.close()
        return self.summary

    def _check(self, chunk: list[Line]) -> validation.CheckedBatch:
        now = utcnow()
        received, unreadable = _received_times(chunk, now)
        checked = validation.check_events(
            ((line.number, line.item) for line in chunk if line.number not in unreadable),
            now=now,
            metadata_limit=self.metadata_limit,
            nul_free=all(line.nul_free for line in chunk),
        )
        for number, event in checked.prepared:
            if number in received:
                event.row.received_at = received[number]
        if unreadable:
            checked.rejected = sorted([*checked.rejected, *unreadable.items()])
        return checked

    @staticmethod
    def _write(
        checked: validation.CheckedBatch, sessions: queue.SimpleQueue
    ) -> tuple[int, int, list[tuple[int, str]]]:
        session = sessions.get()
        try:
            return _store(session, checked)
        finally:
            sessions.put(session)


def _received_times(chunk: list[Line], now: datetime) -> tuple[dict[int, datetime], dict[int, str]]:
    """The ``received_at`` each line gives (an export's, so that retention keeps counting from
    the first arrival; never later than now), and the lines whose received_at is not a time."""
    received, unreadable = {}, {}
    for line in chunk:
        value = line.item.get("received_at") if isinstance(line.item, dict) else None
        if value is None:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError("must be a string")
            received[line.number] = min(parse_timestamp(value), now)
        except ValueError:
            unreadable[line.number] = RECEIVED_AT_INVALID
    return received, unreadable


def _store(
    session: Session, checked: validation.CheckedBatch
) -> tuple[int, int, list[tuple[int, str]]]:
    """Commit a checked chunk's events: (accepted, duplicates, rejected)."""
    stored: list[bool] = []
    if checked.prepared:
        stored = writer.store_events(session, [event.row for _, event in checked.prepared])
    accepted = sum(stored)
    return accepted, len(stored) - accepted, checked.rejected


@dataclass
class _InOrder:
    """Hands chunks to writer threads, at most ``depth`` at a time, and counts
    their results in file order. ``summary.last_line`` ends the committed prefix: it stops
    advancing at the first chunk that failed, although chunks after it that another writer
    committed are still counted."""

    summary: ImportSummary
    on_rejected: Callable[[int, str], None]
    on_chunk: Callable[[ImportSummary], None]
    broken: bool = False

    def drive(self, work: Iterable[tuple[Callable[[], Future], int]], depth: int) -> None:
        in_flight: deque = deque()
        try:
            for submit, last_line in work:
                while len(in_flight) >= depth:
                    self._count(*in_flight.popleft())
                in_flight.append((submit(), last_line))
            while in_flight:
                self._count(*in_flight.popleft())
        finally:
            for future, _ in in_flight:  # stopped early: what has not started never will
                future.cancel()
            for future, last_line in in_flight:  # and what has is still counted
                if not future.cancelled():
                    try:
                        self._count(future, last_line)
                    except Exception:  # the error that stopped the import is the one to report
                        pass

    def _count(self, future: Future, last_line: int) -> None:
        try:
            accepted, duplicates, rejected = future.result()  # a writer's error is raised here
        except BaseException:
            self.broken = True
            raise
        # Rejected lines are reported only now, once their chunk is committed: a line is never
        # both rejected and retried.
        self.summary.accepted += accepted
        self.summary.duplicates += duplicates
        self.summary.rejected += len(rejected)
        for number, message in rejected:
            self.on_rejected(number, message)
        if not self.broken:
            self.summary.last_line = last_line
        self.on_chunk(self.summary)


def writers_for(engine: Engine) -> int:
    """How many chunks an Importer writes at once: two on PostgreSQL, where one chunk's events
    go in while the previous one's sessions are paired (they wait for each other only on the
    users they share, and their totals go to different shards); one on SQLite, which lets
    one transaction write at a time anyway."""
    return 2 if engine.dialect.name == "postgresql" else 1


def describe_error(exc: SQLAlchemyError) -> tuple[str, str]:
    """(kind, reason) of a database error: kind is "missing-table", "unreachable" or
    "failed"; reason the driver's own first line."""
    original = getattr(exc, "orig", None) or exc
    reason = next(
        (line.strip() for line in str(original).splitlines() if line.strip()),
        type(original).__name__,
    )
    if getattr(original, "sqlstate", None) == "42P01" or "no such table" in reason:
        return "missing-table", reason
    if is_unreachable(exc):
        return "unreachable", reason
    return "failed", reason


def _chunks(lines: Iterable[Line], size: int) -> Iterator[list[Line]]:
    chunk: list[Line] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def open_lines(stream: BinaryIO, fmt: str) -> Iterator[Line]:
    """The records of ``stream`` in format ``fmt`` (one of FORMATS)."""
    if fmt == "csv":
        return read_csv(stream)
    return read_ndjson(stream)
