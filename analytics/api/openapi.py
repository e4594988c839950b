"""GET /openapi.json: the OpenAPI 3 document, built from the schemas that validate requests.

apispec is used directly rather than through flask-smorest: request bodies here are read by
our own rules (text/plain beacons, strict JSON, one error envelope), which flask-smorest's
webargs parsing and error handler would have to be overridden to follow.
"""
from __future__ import annotations

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify

from analytics import schemas

bp = Blueprint("openapi", __name__)

JSON = "application/json"


def _error(description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": "Error"}}}


def build_spec(max_metadata_bytes: int = 4096) -> APISpec:
    """The document for the whole API."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Analytics API",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Track events; count them per day, week or month; measure "
                             "play/stop sessions. Every error is "
                             '{"status": "error", "message": "..."}.'},
    )
    plugin.map_to_openapi_type(schemas.Timestamp, "string", "date-time")
    spec.components.schema("TrackEvent", schema=schemas.TrackEventSchema)
    spec.components.schema("TrackResponse", schema=schemas.TrackResponseSchema)
    spec.components.schema("Health", schema=schemas.HealthSchema)
    spec.components.schema("Error", schema=schemas.ErrorSchema)

    spec.path(path="/track", operations={"post": {
        "summary": "Log one event",
        "description": "The body is parsed as JSON when sent as application/json (or any "
                       "+json type), text/plain (navigator.sendBeacon) or with no "
                       "Content-Type. Unknown fields are ignored.",
        "requestBody": {"required": True, "content": {
            JSON: {"schema": "TrackEvent", "example": {
                "event": "play", "user_id": "user123", "timestamp": "2025-01-18T14:30:00Z",
                "metadata": {"song_id": "song456", "device": "mobile", "platform": "ios"}}},
            "text/plain": {"schema": "TrackEvent"},
        }},
        "responses": {
            "200": {"description": "Stored", "content": {JSON: {"schema": "TrackResponse"}}},
            "400": _error("Malformed JSON, not an object, or a field that breaks its rule"),
            "413": _error("Body larger than the configured limit"),
            "415": _error("Content-Type that is not JSON or text/plain"),
            "500": _error("Failed to log event"),
            "503": _error("Failed to log event (database unreachable; see Retry-After)"),
        },
    }})
    spec.path(path="/health", operations={"get": {
        "summary": "Whether the database answers",
        "responses": {
            "200": {"description": "Healthy", "content": {JSON: {"schema": "Health"}}},
            "503": _error("Database unavailable"),
        },
    }})
    spec.path(path="/openapi.json", operations={"get": {
        "summary": "This document",
        "responses": {"200": {"description": "The OpenAPI 3 document",
                              "content": {JSON: {"schema": {"type": "object"}}}}},
    }})
    return spec


@bp.get("/openapi.json")
def openapi_document():
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = build_spec().to_dict()
    return jsonify(current_app.extensions["openapi"])
