"""Pure rules for one incoming event: timestamp parsing, the future-timestamp and
metadata-size rules, and the warnings they produce. No Flask, no database."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from analytics.rows import EventRow

FUTURE_TIMESTAMP_WARNING = "Future timestamp replaced with server time"
METADATA_TRUNCATED_WARNING = "Metadata truncated due to size limit"
END_OF_TIME = datetime.max.replace(tzinfo=UTC)

_ISO_DATETIME = re.compile(
    r"""
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    [Tt\ ]
    (?P<hour>\d{2}):(?P<minute>\d{2})
    (?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?
    (?P<tz>[Zz]|(?P<sign>[+-])(?P<tzh>\d{2}):?(?P<tzm>\d{2}))?
    """,
    re.VERBOSE,
)


# The shape nearly every client sends, with every field in its range: datetime.fromisoformat
# (in C) reads it exactly as the general rule below does, at a twentieth of the cost.
_COMMON_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)?"
)


def parse_timestamp(value: str) -> datetime:
    """An ISO 8601 date and time as an aware UTC datetime; no offset means UTC.

    Raises ValueError with a user-facing sentence when the text is not one.
    """
    if _COMMON_DATETIME.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            pass  # e.g. 30 February: the general rule words the error
    return parse_general_timestamp(value)


def parse_general_timestamp(value: str) -> datetime:
    """parse_timestamp for every accepted shape (spaces around it, a space or lower-case t
    between date and time, no seconds, a comma, more than six decimals, an offset without its
    colon)."""
    match = _ISO_DATETIME.fullmatch(value.strip())
    if not match:
        raise ValueError("must be an ISO 8601 date and time, e.g. 2025-01-18T14:30:00Z")
    parts = match.groupdict()
    fraction = (parts["fraction"] or "0")[:6].ljust(6, "0")
    offset = timedelta(0)
    if parts["sign"]:
        hours, minutes = int(parts["tzh"]), int(parts["tzm"])
        if hours > 23 or minutes > 59:
            raise ValueError("has an invalid UTC offset")
        offset = timedelta(hours=hours, minutes=minutes)
        if parts["sign"] == "-":
            offset = -offset
    try:
        local = datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"]),
            int(parts["minute"]),
            int(parts["second"] or 0),
            int(fraction),
            tzinfo=timezone(offset),
        )
    except (ValueError, OverflowError):
        raise ValueError("is not a valid date and time") from None
    try:
        return local.astimezone(UTC)
    except OverflowError:
        if local.year == datetime.max.year:
            # Past the last instant a datetime holds (9999-12-31T23:59:59-01:00): a future
            # timestamp like any other, which the storage rule replaces with server time.
            return END_OF_TIME
        raise ValueError("is not a valid date and time") from None


# The compact encoding: no spaces, non-ASCII kept as is. It is what the size limit measures and
# the very text stored, so each event's metadata is encoded once.
compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def metadata_size(metadata: dict) -> int:
    """Size in bytes of the compact UTF-8 JSON encoding (no spaces, non-ASCII kept as is)."""
    return _utf8_size(compact_json(metadata))


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


@dataclass
class PreparedEvent:
    """An event ready to store, and the warnings to report for it."""

    row: EventRow
    warnings: list[str] = field(default_factory=list)


def prepare_event(data: dict, *, now: datetime, metadata_limit: int) -> PreparedEvent:
    """Apply the storage rules to a validated event (keys event, user_id, timestamp, metadata,
    and optionally event_id).

    ``timestamp`` is an aware datetime or None; ``raw_timestamp`` the text the client sent.
    The row holds the metadata as the compact JSON text to store (``null`` when absent).
    """
    warnings: list[str] = []
    metadata = data.get("metadata")
    text = None
    if metadata is not None:
        text = compact_json(metadata)
        size = _utf8_size(text)  # metadata_size, with the text kept to be stored
        if size > metadata_limit:
            metadata, text = {"warning": METADATA_TRUNCATED_WARNING, "originalSize": size}, None
            warnings.append(METADATA_TRUNCATED_WARNING)

    occurred_at = data.get("timestamp") or now
    if occurred_at > now:
        occurred_at = now
        metadata, text = dict(metadata or {}), None
        metadata["timestamp_warning"] = FUTURE_TIMESTAMP_WARNING
        metadata["original_timestamp"] = data.get("raw_timestamp")
        warnings.append(FUTURE_TIMESTAMP_WARNING)

    row = EventRow(
        event=data["event"],
        user_id=data["user_id"],
        occurred_at=occurred_at,
        received_at=now,
        metadata_json=compact_json(metadata) if text is None else text,
        event_id=data.get("event_id"),
    )
    return PreparedEvent(row=row, warnings=warnings)
