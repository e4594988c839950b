"""POST /track: store one event (once, when it carries an event_id)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from analytics import validation
from analytics.committer import NoResult, store_event
from analytics.errors import RETRY_AFTER_SECONDS, APIError, failure_message
from analytics.ingest import prepare_event
from analytics.inputs import read_json_object
from analytics.models import utcnow

bp = Blueprint("track", __name__)


def load_event(body: dict) -> dict:
    """Validate one event object; APIError 400 naming the offending fields."""
    try:
        return validation.load_event(body)
    except validation.InvalidEvent as exc:
        raise APIError(400, exc.message, errors=exc.errors) from None


@bp.post("/track")
@failure_message("Failed to log event")
def track() -> Response:
    data = load_event(read_json_object(request, current_app.config["MAX_CONTENT_LENGTH"]))
    prepared = prepare_event(
        data, now=utcnow(), metadata_limit=current_app.config["METADATA_MAX_BYTES"]
    )
    try:
        # The app itself, not the context's proxy: the committer's thread has no context.
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        stored = store_event(app, prepared.row)
    except NoResult:
        current_app.logger.warning("POST /track answered 503: no result from the writer")
        raise APIError(
            503, "Failed to log event", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        ) from None
    body: dict[str, object] = {"status": "success", "message": "Event logged."}
    if not stored:
        # Already stored by an earlier request: the warnings that request got describe the
        # stored event; this one changed nothing, so it reports none.
        body["duplicate"] = True
    elif prepared.warnings:
        body["warnings"] = prepared.warnings
    return jsonify(body)
