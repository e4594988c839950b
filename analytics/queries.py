"""Database statements as plain functions of a session: no Flask, and no commit."""
from __future__ import annotations

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from analytics.models import Event


def insert_events(session: Session, rows: list[dict]) -> None:
    """Insert prepared event rows (see ingest.prepare_event) in one statement."""
    session.execute(insert(Event), rows)


def ping(session: Session) -> None:
    """Raise if the database does not answer."""
    session.execute(text("SELECT 1"))
