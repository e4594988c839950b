"""Checking incoming events by the POST /track rules, one or many: the step POST /track,
POST /track/batch and the import command share, so that every way in applies the same rules.

Each item is validated (``TrackEventSchema``, or its quick path for plainly valid events) and
shaped into an ``EventRow`` by ``ingest.prepare_event``; an invalid item is reported with its
position and skipped. Storing is analytics/writer.py's job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from marshmallow import ValidationError

from analytics.ingest import PreparedEvent, prepare_event
from analytics.schemas import TrackEventSchema, ordered_errors, quick_load_event, validation_message

NOT_AN_OBJECT = "Event must be a JSON object"
MALFORMED_JSON = "Malformed JSON"

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


def load_event(item: object, nul_free: bool = False) -> dict[str, Any]:
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
        checked: dict[str, Any] = _schema.load(item)
        return checked
    except ValidationError as exc:
        errors = ordered_errors(_schema, exc.messages_dict)
        raise InvalidEvent(validation_message(errors), errors) from None


@dataclass
class CheckedBatch:
    """Items checked against the rules: what to store, and what was rejected and why.

    Positions are whatever the caller numbers items by: an index in a request, a line in a file.
    """

    prepared: list[tuple[int, PreparedEvent]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def check_events(
    items: Iterable[tuple[int, object]],
    *,
    now: datetime,
    metadata_limit: int,
    nul_free: bool = False,
) -> CheckedBatch:
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
            (position, prepare_event(data, now=now, metadata_limit=metadata_limit))
        )
    return checked
