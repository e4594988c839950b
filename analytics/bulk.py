"""Checking and storing events in bulk: the steps POST /track, POST /track/batch and the import
command share, so that every way in applies the same rules and the same deduplication.

Each item is validated by the POST /track rules (``TrackEventSchema``, or its quick path for
plainly valid events) and shaped by ``ingest.prepare_event``, exactly as a single POST /track
body is; an invalid item is reported with its position and skipped.
Valid events are stored with ``queries.insert_events`` and committed here, in one transaction.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from analytics.db import release_writer_turn
from analytics.ingest import PreparedEvent, prepare_event
from analytics.queries import insert_events
from analytics.schemas import (TrackEventSchema, ordered_errors, quick_load_event,
                               validation_message)

NOT_AN_OBJECT = "Event must be a JSON object"
MALFORMED_JSON = "Malformed JSON"

# PostgreSQL's deadlock_detected and serialization_failure: the transaction lost a race with
# another one (two batches holding each other's event_ids, in opposite orders) and is safe to
# run again. SQLite serialises writers, so it never reports these.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
COMMIT_ATTEMPTS = 4

_schema = TrackEventSchema()


class Unreadable:
    """An item that could not even be read as JSON: rejected with ``message``."""

    __slots__ = ("message",)

    def __init__(self, message: str = MALFORMED_JSON):
        self.message = message


class InvalidEvent(Exception):
    """An item that breaks a rule of POST /track; ``errors`` maps fields to messages."""

    def __init__(self, message: str, errors: dict | None = None):
        super().__init__(message)
        self.message = message
        self.errors = errors


def load_event(item, nul_free: bool = False) -> dict:
    """Validate one incoming event by the POST /track rules; InvalidEvent when it fails.
    ``nul_free`` as for ``schemas.quick_load_event``."""
    loaded = quick_load_event(item, nul_free)
    if loaded is not None:
        return loaded
    if isinstance(item, Unreadable):
        raise InvalidEvent(item.message)
    if not isinstance(item, dict):
        raise InvalidEvent(NOT_AN_OBJECT)
    try:
        return _schema.load(item)
    except ValidationError as exc:
        errors = ordered_errors(_schema, exc.messages)
        raise InvalidEvent(validation_message(errors), errors) from None


@dataclass
class CheckedBatch:
    """Items checked against the rules: what to store, and what was rejected and why.

    Positions are whatever the caller numbers items by: an index in a request, a line in a file.
    """

    prepared: list[tuple[int, PreparedEvent]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def check_events(items: Iterable[tuple[int, object]], *, now: datetime,
                 metadata_limit: int, nul_free: bool = False) -> CheckedBatch:
    """Validate and prepare each (position, item); one bad item never affects the others.
    ``nul_free``: no string in any item contains U+0000 (see ``schemas.json_text_is_nul_free``).
    """
    checked = CheckedBatch()
    for position, item in items:
        try:
            data = load_event(item, nul_free)
        except InvalidEvent as exc:
            checked.rejected.append((position, exc.message))
            continue
        checked.prepared.append(
            (position, prepare_event(data, now=now, metadata_limit=metadata_limit)))
    return checked


def is_retryable(exc: DBAPIError) -> bool:
    """Whether the database aborted the transaction only because it lost a race."""
    return getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def commit_events(session: Session, rows: list[dict], *,
                  insert: Callable[[Session, list[dict]], list[bool]] = insert_events
                  ) -> list[bool]:
    """Store prepared rows with ``insert`` and commit; for each row, whether it was stored
    (False: a duplicate).

    Everything is in one transaction: either all the new rows are committed or none is. A
    transaction aborted by a deadlock or a serialization failure is rolled back and run again
    (the same rows, so the answer is the same as if it had gone through the first time).
    """
    try:
        return _commit_with_retries(session, rows, insert)
    except BaseException:
        session.rollback()  # before another writer's turn: it would find SQLite's lock held
        raise
    finally:
        release_writer_turn(session)


def _commit_with_retries(session: Session, rows: list[dict], insert) -> list[bool]:
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            stored = insert(session, rows)  # takes the SQLite writer turn before writing
            session.commit()
            return stored
        except DBAPIError as exc:
            if attempt == COMMIT_ATTEMPTS or not is_retryable(exc):
                raise  # rolled back by commit_events
            session.rollback()
            # Jitter, so that the two transactions that collided do not collide again.
            time.sleep(random.uniform(0.005, 0.05) * attempt)
    raise AssertionError("unreachable")
