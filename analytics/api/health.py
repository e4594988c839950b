"""GET /health: whether the database answers."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError

from analytics.db import close_session, get_session, ping
from analytics.errors import RETRY_AFTER_SECONDS, error_response

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    try:
        ping(get_session())
    except SQLAlchemyError as exc:
        close_session()
        current_app.logger.warning(
            "health check: database unavailable (%s)", exc.__class__.__name__
        )
        return error_response(
            503, "Database unavailable", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return jsonify({"status": "ok"})
