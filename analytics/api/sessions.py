"""GET /sessions: play/stop sessions per period of their play: count, total and average."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from analytics import reports
from analytics.api.metrics import answer
from analytics.api.query import load_period_query
from analytics.db import get_session
from analytics.errors import failure_message

bp = Blueprint("sessions", __name__)

MICROSECONDS = 1_000_000


def seconds_half_up(microseconds: int, count: int = 1) -> int:
    """``microseconds / count`` in whole seconds, halves rounded up (integer arithmetic, exact).

    floor(x / (count * 10**6) + 1/2) == floor((2x + count * 10**6) / (2 * count * 10**6)).
    """
    unit = count * MICROSECONDS
    return (2 * microseconds + unit) // (2 * unit)


@bp.get("/sessions")
@failure_message("Failed to fetch session metrics")
def sessions() -> Response:
    query = load_period_query(request.args, "/sessions", refused=("event",))
    data = [
        {
            "date": label,
            "totalDuration": seconds_half_up(total),
            "sessionCount": count,
            "averageDuration": seconds_half_up(total, count) if count else 0,
        }
        for label, count, total in answer(lambda: reports.sessions(get_session(), query))
    ]
    return jsonify({"status": "success", "data": data})
