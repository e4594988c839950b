"""A user's data on request: DELETE /users/<user_id> erases every event of the user, and
GET /users/<user_id>/events streams them. ``<user_id>`` is percent-encoded (``/`` as ``%2F``,
see encoded_paths.py)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from analytics import erasure, export
from analytics.api.export import streamed
from analytics.auth import current_access
from analytics.db import get_engine
from analytics.encoded_paths import decode_segment
from analytics.errors import failure_message
from analytics.models import utcnow

bp = Blueprint("users", __name__)
log = logging.getLogger(__name__)


@bp.delete("/users/<user_id>")
@failure_message("Failed to delete the user's events")
def erase(user_id: str) -> Response:
    user_id = decode_segment("user_id", user_id)
    deleted = erasure.erase_user(get_engine(), user_id)
    # The record of an erasure: when, on whose authority, how much. Never the user's id or
    # events, which would keep in the logs what was just erased.
    key = current_access().key
    log.info(
        "erasure: %d events of one user deleted at %s by key %s",
        deleted,
        utcnow().isoformat(timespec="seconds").replace("+00:00", "Z"),
        key.name if key is not None else "(none: AUTH_MODE lets admin requests in without)",
    )
    return jsonify({"status": "success", "deleted": deleted})


@bp.get("/users/<user_id>/events")
@failure_message("Failed to export the user's events")
def user_events(user_id: str) -> Response:
    chosen = export.EventFilter(user_id=decode_segment("user_id", user_id))
    return streamed(chosen, "ndjson")
