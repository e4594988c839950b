"""POST /track: store one event."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from marshmallow import ValidationError

from analytics.inputs import read_json_object
from analytics.db import get_session
from analytics.errors import APIError, failure_message
from analytics.ingest import prepare_event
from analytics.models import utcnow
from analytics.queries import insert_events
from analytics.schemas import TrackEventSchema, validation_message

bp = Blueprint("track", __name__)

_schema = TrackEventSchema()


def load_event(body: dict) -> dict:
    """Validate one event object; APIError 400 naming the offending fields."""
    try:
        return _schema.load(body)
    except ValidationError as exc:
        order = list(_schema.fields)
        errors = dict(sorted(exc.messages.items(),
                             key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        raise APIError(400, validation_message(errors), errors=errors) from None


@bp.post("/track")
@failure_message("Failed to log event")
def track():
    data = load_event(read_json_object(request))
    prepared = prepare_event(data, now=utcnow(),
                             metadata_limit=current_app.config["METADATA_MAX_BYTES"])
    session = get_session()
    insert_events(session, [prepared.row])
    session.commit()
    body = {"status": "success", "message": "Event logged."}
    if prepared.warnings:
        body["warnings"] = prepared.warnings
    return jsonify(body)
