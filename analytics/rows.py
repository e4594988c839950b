"""The typed rows of the write path: an event ready to store, and a stored event as the
aggregates see it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


@dataclass(slots=True)
class EventRow:
    """One event that passed the POST /track rules, shaped as it will be stored.

    Times are aware UTC datetimes; ``metadata_json`` is the compact JSON text stored (``null``
    when absent).
    """

    event: str
    user_id: str
    occurred_at: datetime
    received_at: datetime
    metadata_json: str
    event_id: str | None = None

    def dedupe_key(self) -> tuple[str, str] | None:
        """What makes two rows the same event (None: never deduplicated)."""
        return None if self.event_id is None else (self.user_id, self.event_id)


class StoredEvent(NamedTuple):
    """The columns of an inserted or deleted event that aggregates depend on. Tuples sort as a
    user's events are ordered for session pairing: by timestamp, then id (arrival)."""

    occurred_at: datetime
    id: int
    event: str
    user_id: str
