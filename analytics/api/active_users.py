"""GET /active-users: how many distinct users did anything, per hour, day, week or month."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from analytics import reports
from analytics.api.metrics import answer
from analytics.api.query import load_period_query
from analytics.db import get_session
from analytics.errors import failure_message

bp = Blueprint("active_users", __name__)


@bp.get("/active-users")
@failure_message("Failed to fetch active users")
def active_users() -> Response:
    query = load_period_query(request.args, "/active-users", refused=("user_id",))
    data = [
        {"date": label, "users": users}
        for label, users in answer(lambda: reports.active_users(get_session(), query))
    ]
    return jsonify({"status": "success", "data": data})
