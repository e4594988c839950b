"""GET /metrics: how many events of each name happened per day, ISO week or month."""
from __future__ import annotations

from itertools import groupby

from flask import Blueprint, jsonify, request
from marshmallow import ValidationError

from analytics.db import get_session
from analytics.errors import APIError, failure_message
from analytics.queries import metrics as count_events
from analytics.schemas import PeriodQuerySchema, period_query_error

bp = Blueprint("metrics", __name__)

_query_schema = PeriodQuerySchema()


def load_period_query(args) -> dict:
    """The validated query string of a per-period endpoint; APIError 400 with the contract's
    message (the first that applies, see schemas.PERIOD_QUERY_PRECEDENCE)."""
    try:
        # First value of each parameter; repeated parameters are not lists here.
        return _query_schema.load(args.to_dict())
    except ValidationError as exc:
        message, errors = period_query_error(exc.messages)
        raise APIError(400, message, errors=errors) from None


@bp.get("/metrics")
@failure_message("Failed to fetch metrics")
def metrics():
    query = load_period_query(request.args)
    rows = count_events(get_session(), query["start_date"], query["end_date"],
                        query["group_by"], query.get("user_id"))
    data = []
    for label, period_rows in groupby(rows, key=lambda row: row[0]):
        period = {"date": label}
        # Event names in code-point order, the same on every database whatever its collation.
        period.update(sorted((event, count) for _, event, count in period_rows))
        data.append(period)
    return jsonify({"status": "success", "data": data})
