"""GET /metrics: how many events of each name happened per hour, day, week or month."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Blueprint, Response, request

from analytics import reports
from analytics.api.query import load_period_query
from analytics.db import get_session
from analytics.errors import APIError, failure_message

bp = Blueprint("metrics", __name__)
T = TypeVar("T")


def answer(rows: Callable[[], T]) -> T:
    """Run a report; a refused fill=zero is a 400."""
    try:
        return rows()
    except reports.TooManyPeriods as exc:
        raise APIError(400, f"{exc}; narrow the range or leave fill out") from None


@bp.get("/metrics")
@failure_message("Failed to fetch metrics")
def metrics() -> Response:
    query = load_period_query(request.args, "/metrics")
    # Written as text by reports.metrics, largely by the database (docs/architecture.md).
    data = answer(lambda: reports.metrics(get_session(), query))
    return Response(f'{{"status":"success","data":{data}}}\n', mimetype="application/json")
