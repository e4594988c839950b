"""POST /track: store one event (once, when it carries an event_id)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from analytics import bulk
from analytics.committer import store_event
from analytics.errors import APIError, failure_message
from analytics.ingest import prepare_event
from analytics.inputs import read_json_object
from analytics.models import utcnow

bp = Blueprint("track", __name__)


def load_event(body: dict) -> dict:
    """Validate one event object; APIError 400 naming the offending fields."""
    try:
        return bulk.load_event(body)
    except bulk.InvalidEvent as exc:
        raise APIError(400, exc.message, errors=exc.errors) from None


@bp.post("/track")
@failure_message("Failed to log event")
def track():
    data = load_event(read_json_object(request))
    prepared = prepare_event(data, now=utcnow(),
                             metadata_limit=current_app.config["METADATA_MAX_BYTES"])
    stored = store_event(current_app._get_current_object(), prepared.row)
    body = {"status": "success", "message": "Event logged."}
    if not stored:
        # Already stored by an earlier request: the warnings that request got describe the
        # stored event; this one changed nothing, so it reports none.
        body["duplicate"] = True
    elif prepared.warnings:
        body["warnings"] = prepared.warnings
    return jsonify(body)
