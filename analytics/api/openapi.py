"""GET /openapi.json: the OpenAPI 3 document, built from the schemas that validate requests.

apispec is used directly rather than through flask-smorest: request bodies here are read by
our own rules (text/plain beacons, strict JSON, one error envelope), which flask-smorest's
webargs parsing and error handler would have to be overridden to follow.
"""

from __future__ import annotations

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify

from analytics import auth, ratelimits, schemas

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
        info={
            "description": "Track events; count them per day, week or month; measure "
            "play/stop sessions. Every error is "
            '{"status": "error", "message": "..."}.'
        },
    )
    plugin.map_to_openapi_type(schemas.Timestamp, "string", "date-time")
    spec.components.schema("TrackEvent", schema=schemas.TrackEventSchema)
    spec.components.schema("TrackResponse", schema=schemas.TrackResponseSchema)
    spec.components.schema("Health", schema=schemas.HealthSchema)
    spec.components.schema("Error", schema=schemas.ErrorSchema)

    spec.path(
        path="/track",
        operations={
            "post": {
                "summary": "Log one event",
                "description": "The body is parsed as JSON when sent as application/json (or any "
                "+json type), text/plain (navigator.sendBeacon) or with no "
                "Content-Type. Unknown fields are ignored.",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": "TrackEvent",
                            "example": {
                                "event": "play",
                                "user_id": "user123",
                                "timestamp": "2025-01-18T14:30:00Z",
                                "metadata": {
                                    "song_id": "song456",
                                    "device": "mobile",
                                    "platform": "ios",
                                },
                            },
                        },
                        "text/plain": {"schema": "TrackEvent"},
                    },
                },
                "responses": {
                    "200": {
                        "description": "Stored",
                        "content": {JSON: {"schema": "TrackResponse"}},
                    },
                    "400": _error("Malformed JSON, not an object, or a field that breaks its rule"),
                    "413": _error("Body larger than the configured limit"),
                    "415": _error("Content-Type that is not JSON or text/plain"),
                    "500": _error("Failed to log event"),
                    "503": _error("Failed to log event (database unreachable; see Retry-After)"),
                },
            }
        },
    )
    _batch_path(spec)
    _period_paths(spec)
    _export_paths(spec)
    spec.path(
        path="/health",
        operations={
            "get": {
                "summary": "Whether the database answers",
                "responses": {
                    "200": {"description": "Healthy", "content": {JSON: {"schema": "Health"}}},
                    "503": _error("Database unavailable"),
                },
            }
        },
    )
    spec.path(
        path="/openapi.json",
        operations={
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3 document",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    )
    _page_paths(spec)
    return spec


def _page_paths(spec: APISpec) -> None:
    """The browser's pages: HTML and JavaScript, the exception to JSON responses."""
    pages = {
        "/dashboard": (
            "The dashboard: charts and a table of /metrics, /sessions and /active-users",
            "text/html",
        ),
        "/docs": ("This reference, rendered from /openapi.json", "text/html"),
        "/analytics.js": (
            "The browser tracker: analytics.init({endpoint, key}), "
            "track(event, metadata), identify(userId)",
            "text/javascript",
        ),
    }
    for path, (summary, media_type) in pages.items():
        spec.path(
            path=path,
            operations={
                "get": {
                    "summary": summary,
                    "responses": {
                        "200": {
                            "description": summary.split(":")[0],
                            "content": {media_type: {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        )


def _period_paths(spec: APISpec) -> None:
    """GET /metrics, GET /sessions and GET /active-users: the same query string, different
    rows."""
    spec.components.schema(
        "MetricsRow",
        {
            "additionalProperties": {
                "type": "integer",
                "minimum": 0,
                "description": "Count of the events of this name in the period (0 only with "
                "fill=zero).",
            }
        },
        schema=schemas.MetricsRowSchema,
    )
    spec.components.schema("MetricsResponse", schema=schemas.MetricsResponseSchema)
    spec.components.schema("SessionsRow", schema=schemas.SessionsRowSchema)
    spec.components.schema("SessionsResponse", schema=schemas.SessionsResponseSchema)
    spec.components.schema("ActiveUsersRow", schema=schemas.ActiveUsersRowSchema)
    spec.components.schema("ActiveUsersResponse", schema=schemas.ActiveUsersResponseSchema)
    parameters = [{"in": "query", "schema": schemas.PeriodQuerySchema}]
    session_parameters = [{"in": "query", "schema": schemas.PeriodQuerySchema(exclude=("event",))}]
    active_user_parameters = [
        {"in": "query", "schema": schemas.PeriodQuerySchema(exclude=("user_id",))}
    ]
    validation = _error(
        'Invalid query string; exactly one of, in this order of precedence: '
        + ", ".join(f'"{message}"' for message in schemas.PERIOD_QUERY_PRECEDENCE)
        + ', then "event is not a parameter of /sessions" (on /sessions) or "user_id is not '
        'a parameter of /active-users" (on /active-users)'
    )
    validation["content"][JSON]["example"] = {"status": "error", "message": schemas.DATES_REQUIRED}
    range_note = (
        "start_date and end_date are local dates in the zone tz (default UTC): the range is "
        "every event whose local date lies between them, inclusive. Periods are local hours "
        "(labelled YYYY-MM-DDTHH:00+HH:MM with the UTC offset, so the hour repeated when "
        "clocks go back appears twice and the skipped one not at all), days (YYYY-MM-DD), "
        "weeks starting on week_start (labelled with that day, which may precede start_date) "
        "or months (YYYY-MM-01), ordered by their first instant. Periods without data are "
        "left out unless fill=zero. Exact in every zone: no sampling. start_date must not be "
        "after end_date (400 \"start_date must not be after end_date\")."
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "summary": "Event counts per event name per period",
                "description": range_note,
                "parameters": parameters,
                "responses": {
                    "200": {
                        "description": "Counts per period, ascending",
                        "content": {
                            JSON: {
                                "schema": "MetricsResponse",
                                "example": {
                                    "status": "success",
                                    "data": [
                                        {"date": "2025-01-01", "pause": 5, "play": 24, "stop": 22},
                                        {"date": "2025-01-02", "play": 3, "purchase": 1},
                                    ],
                                },
                            }
                        },
                    },
                    "400": validation,
                    "500": _error("Failed to fetch metrics"),
                    "503": _error(
                        "Failed to fetch metrics (database unreachable; see Retry-After)"
                    ),
                },
            }
        },
    )
    spec.path(
        path="/sessions",
        operations={
            "get": {
                "summary": "Play/stop session statistics per period",
                "description": (
                    "Each stop is paired with the same user's most recent earlier play-or-stop "
                    "event "
                    "(by timestamp, then arrival order), over the user's whole history; when that "
                    "event is a play the two make one session. Other events do not interrupt a "
                    "session. A session belongs to the period of its play and is in the range when "
                    "its play is (its stop may come later). Durations are exact; totals and "
                    "averages are whole seconds, halves rounded up. " + range_note
                ),
                "parameters": session_parameters,
                "responses": {
                    "200": {
                        "description": "Sessions per period, ascending",
                        "content": {
                            JSON: {
                                "schema": "SessionsResponse",
                                "example": {
                                    "status": "success",
                                    "data": [
                                        {
                                            "date": "2025-01-01",
                                            "totalDuration": 7200,
                                            "sessionCount": 15,
                                            "averageDuration": 480,
                                        }
                                    ],
                                },
                            }
                        },
                    },
                    "400": validation,
                    "500": _error("Failed to fetch session metrics"),
                    "503": _error(
                        "Failed to fetch session metrics (database unreachable; see Retry-After)"
                    ),
                },
            }
        },
    )
    spec.path(
        path="/active-users",
        operations={
            "get": {
                "summary": "Distinct active users per period",
                "description": (
                    "How many distinct user_ids sent at least one event (one of the event "
                    "parameters, "
                    "when given) in each period: daily, weekly or monthly active users. A user "
                    "active "
                    "on two days of a week counts once in that week. Exact: no sampling or "
                    "estimate. " + range_note
                ),
                "parameters": active_user_parameters,
                "responses": {
                    "200": {
                        "description": "Users per period, ascending",
                        "content": {
                            JSON: {
                                "schema": "ActiveUsersResponse",
                                "example": {
                                    "status": "success",
                                    "data": [
                                        {"date": "2025-01-01", "users": 1250},
                                        {"date": "2025-01-02", "users": 1184},
                                    ],
                                },
                            }
                        },
                    },
                    "400": validation,
                    "500": _error("Failed to fetch active users"),
                    "503": _error(
                        "Failed to fetch active users (database unreachable; see Retry-After)"
                    ),
                },
            }
        },
    )


def _export_paths(spec: APISpec) -> None:
    """GET /events, GET /users/{user_id}/events and DELETE /users/{user_id}."""
    spec.components.schema("ExportedEvent", schema=schemas.ExportedEventSchema)
    spec.components.schema("ErasureResponse", schema=schemas.ErasureResponseSchema)
    ndjson = {
        "application/x-ndjson": {
            "schema": {
                "type": "string",
                "description": "One ExportedEvent object a line "
                "(components/schemas/ExportedEvent).",
            },
            "example": '{"event":"play","user_id":"user123","timestamp":"2025-01-18T14:30:00.000Z",'
            '"metadata":{"song_id":"song456"},"event_id":null,'
            '"received_at":"2025-01-18T14:30:00.120Z"}\n',
        }
    }
    csv_body = {
        "text/csv": {
            "schema": {"type": "string", "description": "RFC 4180, CRLF line ends, a header row."},
            "example": "timestamp,event,user_id,event_id,received_at,metadata\r\n"
            '2025-01-18T14:30:00.000Z,play,user123,,2025-01-18T14:30:00.120Z,'
            '"{""song_id"":""song456""}"\r\n',
        }
    }
    stream_note = (
        "Oldest first (by timestamp, then arrival), streamed as it is read: memory stays flat "
        "at any size. Times are ISO 8601 in UTC with milliseconds and Z (microseconds too "
        "where the stored time has them); absent values are null. A failure after the first "
        "bytes cuts the stream short (no terminating chunk)."
    )
    user_id = {
        "name": "user_id",
        "in": "path",
        "required": True,
        "description": "The user's id, percent-encoded (/ as %2F, a space as %20).",
        "schema": {"type": "string"},
        "example": "user%2F123",
    }
    spec.path(
        path="/events",
        operations={
            "get": {
                "summary": "The stored events of a range, as NDJSON or CSV",
                "description": stream_note + " CSV: header timestamp,event,user_id,event_id,"
                "received_at,metadata; metadata as compact JSON text; an absent value "
                "is an empty field. flask --app wsgi import reads either back.",
                "parameters": [
                    {
                        "in": "query",
                        "schema": schemas.EventsQuerySchema(exclude=schemas.NOT_EXPORT_PARAMETERS),
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The events, oldest first",
                        "content": {**ndjson, **csv_body},
                    },
                    "400": _error(
                        "Invalid query string: the messages of /metrics for start_date, "
                        "end_date, tz and event, in the same order, then "
                        f'"{schemas.INVALID_FORMAT}"'
                    ),
                    "500": _error("Failed to export events"),
                    "503": _error(
                        "Failed to export events (database unreachable; see Retry-After)"
                    ),
                },
            }
        },
    )
    spec.path(
        path="/users/{user_id}/events",
        operations={
            "get": {
                "summary": "Every stored event of one user, as NDJSON",
                "description": stream_note + " An unknown user: 200 with an empty body.",
                "parameters": [user_id],
                "responses": {
                    "200": {"description": "The user's events, oldest first", "content": ndjson},
                    "400": _error("The id is not percent-encoded UTF-8, or holds U+0000"),
                    "500": _error("Failed to export the user's events"),
                    "503": _error("Failed to export the user's events (database unreachable)"),
                },
            }
        },
    )
    spec.path(
        path="/users/{user_id}",
        operations={
            "delete": {
                "summary": "Erase every stored event of one user",
                "description": "The events leave /metrics, /sessions and /active-users in the same "
                "transactions; they are deleted in short batches, so ingest goes on "
                "meanwhile. The user's event_ids may be used again afterwards. Each "
                "erasure is logged with its time, the key's name and the count.",
                "parameters": [user_id],
                "responses": {
                    "200": {
                        "description": "Erased (0 when there was nothing)",
                        "content": {
                            JSON: {
                                "schema": "ErasureResponse",
                                "example": {"status": "success", "deleted": 42},
                            }
                        },
                    },
                    "400": _error("The id is not percent-encoded UTF-8, or holds U+0000"),
                    "500": _error("Failed to delete the user's events"),
                    "503": _error("Failed to delete the user's events (database unreachable)"),
                },
            }
        },
    )


@bp.get("/openapi.json")
def openapi_document():
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = add_security(
            build_spec().to_dict(), current_app.config["AUTH_MODE"]
        )
    # The configured public URL, else a relative one: never the request's Host header, which
    # any client can set to send the tools that read this document elsewhere.
    server = {"url": current_app.config["PUBLIC_URL"] or "/"}
    return jsonify({**current_app.extensions["openapi"], "servers": [server]})


def _batch_path(spec: APISpec) -> None:
    """POST /track/batch: many events, as JSON or NDJSON, maybe gzipped."""
    spec.components.schema("TrackBatch", schema=schemas.TrackBatchSchema)
    spec.components.schema("TrackBatchResponse", schema=schemas.TrackBatchResponseSchema)
    spec.path(
        path="/track/batch",
        operations={
            "post": {
                "summary": "Log many events",
                "description": "Each event follows the POST /track rules; invalid events are "
                "reported by index and skipped, the valid ones stored and committed before the "
                "answer. Events whose user_id and event_id are already stored (or "
                "repeat within the batch) count as duplicates. Either body may be "
                "sent compressed, with the HTTP header Content-Encoding: gzip (any "
                "other coding is a 415); the size limit applies to the decompressed "
                "body.",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": "TrackBatch",
                            "example": {
                                "events": [
                                    {
                                        "event": "play",
                                        "user_id": "user123",
                                        "timestamp": "2025-01-18T14:30:00Z",
                                        "event_id": "3f2b8c1e-6d0a-4f5e-9b7a-2c4d6e8f0a1b",
                                    },
                                    {
                                        "event": "stop",
                                        "user_id": "user123",
                                        "timestamp": "2025-01-18T14:33:20Z",
                                        "event_id": "9a1c4e2b-7f3d-4b8a-a6c5-1e2f3a4b5c6d",
                                    },
                                ]
                            },
                        },
                        "application/x-ndjson": {
                            "schema": {
                                "type": "string",
                                "description": "One TrackEvent object a line; blank lines skipped.",
                            },
                            "example": '{"event": "play", "user_id": "user123"}\n'
                            '{"event": "stop", "user_id": "user123"}\n',
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "Every event is accepted, a duplicate, or rejected",
                        "content": {
                            JSON: {
                                "schema": "TrackBatchResponse",
                                "example": {
                                    "status": "success",
                                    "accepted": 2,
                                    "duplicates": 1,
                                    "rejected": [{"index": 3, "message": "user_id is required"}],
                                    "warnings": [
                                        {
                                            "index": 1,
                                            "warnings": [
                                                "Future timestamp replaced with server time"
                                            ],
                                        }
                                    ],
                                },
                            }
                        },
                    },
                    "400": _error(
                        "Not a batch (no events list), malformed JSON or gzip, an empty "
                        "batch, or every event rejected (nothing stored; errors per "
                        "events[i])"
                    ),
                    "413": _error(
                        "More events than BATCH_MAX_EVENTS, or a (decompressed) body "
                        "larger than the configured limit; nothing stored"
                    ),
                    "415": _error(
                        "Content-Type other than JSON or NDJSON, or Content-Encoding "
                        "other than gzip"
                    ),
                    "500": _error("Failed to log events (nothing stored)"),
                    "503": _error("Failed to log events (database unreachable; see Retry-After)"),
                },
            }
        },
    )


def _refusal(description: str, headers: dict | None = None) -> dict:
    """An error response written into the finished document, where names are not resolved."""
    content = {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}
    response = {"description": description, "content": content}
    if headers:
        response["headers"] = headers
    return response


_HEADER = {"schema": {"type": "integer"}}
LIMIT_HEADERS = {
    "RateLimit-Limit": {**_HEADER, "description": "Requests allowed in the window"},
    "RateLimit-Remaining": {**_HEADER, "description": "Requests left in the window"},
    "RateLimit-Reset": {**_HEADER, "description": "Seconds until the window starts again"},
}


def add_security(document: dict, auth_mode: str) -> dict:
    """Declare the key schemes and, on each operation that takes a key, which it accepts (an
    empty requirement where ``auth_mode`` lets it go without) and its 401, 403 and 429."""
    document.setdefault("components", {})["securitySchemes"] = {
        "bearerKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An access key (flask --app wsgi keys create): "
            "Authorization: Bearer ak_...",
        },
        "queryKey": {
            "type": "apiKey",
            "in": "query",
            "name": "key",
            "description": "An ingest key in the query string, for "
            "navigator.sendBeacon: POST /track and /track/batch only.",
        },
    }
    challenge = {"WWW-Authenticate": {"schema": {"type": "string", "example": "Bearer"}}}
    for path, operations in document["paths"].items():
        scope = auth.scope_for(path)
        for operation in operations.values():
            if scope is None:
                operation["security"] = []
                continue
            accepted = [{"bearerKey": []}]
            if scope == auth.INGEST:
                accepted.append({"queryKey": []})
            if scope not in auth.REQUIRED_IN_MODE[auth_mode]:
                accepted.append({})
            operation["security"] = accepted
            operation["responses"].update(
                {
                    "401": _refusal(f'"{auth.KEY_REQUIRED}" or "{auth.INVALID_KEY}"', challenge),
                    "403": _refusal(f'"{auth.not_allowed(scope)}" or "{auth.ORIGIN_NOT_ALLOWED}"'),
                    "429": _refusal(
                        f'"{ratelimits.EXCEEDED}": wait Retry-After seconds',
                        {
                            "Retry-After": {**_HEADER, "description": "Seconds to wait"},
                            **LIMIT_HEADERS,
                        },
                    ),
                }
            )
    return document
