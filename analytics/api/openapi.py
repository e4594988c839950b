"""GET /openapi.json: the OpenAPI 3 document, built from the schemas that validate requests.

apispec is used directly rather than through flask-smorest: request bodies here are read by
our own rules (text/plain beacons, strict JSON, one error envelope), which flask-smorest's
webargs parsing and error handler would have to be overridden to follow.

The document is the API's reference: /docs renders it, and docs/api.md is generated from it
(tools/api_reference.py). Limits that are settings are written from the app's configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app, jsonify

from analytics import auth, ratelimits, reports, schemas
from analytics.api.batch import ALL_REJECTED, NOT_A_BATCH
from analytics.ingest import FUTURE_TIMESTAMP_WARNING as FUTURE_WARNING
from analytics.ingest import METADATA_TRUNCATED_WARNING as TRUNCATED_WARNING
from analytics.inputs import MALFORMED_BODY, MALFORMED_JSON

bp = Blueprint("openapi", __name__)

JSON = "application/json"


@dataclass(frozen=True)
class Limits:
    """The configurable limits the document states."""

    body_bytes: int  # MAX_REQUEST_BYTES
    metadata_bytes: int  # METADATA_MAX_BYTES
    batch_events: int  # BATCH_MAX_EVENTS

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> Limits:
        return cls(
            body_bytes=settings["MAX_CONTENT_LENGTH"],
            metadata_bytes=settings["METADATA_MAX_BYTES"],
            batch_events=settings["BATCH_MAX_EVENTS"],
        )


def default_settings() -> dict:
    """The settings of an environment that sets nothing."""
    from config import load_config

    return load_config({}).as_dict()


def _error(description: str, example: dict | None = None) -> dict:
    content: dict = {"schema": "Error"}
    if example is not None:
        content["example"] = example
    return {"description": description, "content": {JSON: content}}


def _failure(message: str) -> dict:
    """The 500 and 503 of an endpoint whose database failed it."""
    return {
        "500": _error(message),
        "503": _error(
            f"{message} (database unreachable, or a lock waited for too long; see Retry-After)"
        ),
    }


def _field_error(message: str, field: str) -> dict:
    return {"status": "error", "message": message, "errors": {field: [message]}}


def _overview(limits: Limits) -> str:
    """The rules every endpoint follows."""
    return f"""\
Events in (POST /track, POST /track/batch); counts per period (GET /metrics), distinct \
active users (GET /active-users) and play/stop sessions (GET /sessions) out, exact in any \
time zone; the stored events back out (GET /events), and one user's data exported or erased \
(/users/{{user_id}}).

**Responses.** Every answer is JSON, errors included, except the pages (/dashboard, /docs, \
/analytics.js) and the exports (NDJSON, CSV); each carries `X-Request-Id` (the request's own, \
or a new one). Every error is `{{"status": "error", "message": "<one sentence>"}}`, with an \
`errors` object mapping the fields concerned to their messages where there are fields to \
name. Unknown path: 404; known path, wrong method: 405 with `Allow`.

**Request bodies** are at most {limits.body_bytes} bytes (MAX_REQUEST_BYTES): a larger one, or \
a chunked one as soon as it grows past that, is 413 and nothing of it is stored. A body \
shorter than its Content-Length, or a malformed chunked body: 400 "{MALFORMED_BODY}". No \
string anywhere in a request (fields, metadata keys and values, query parameters) may \
contain U+0000: 400.

**When the database fails** the answer is 500 with the endpoint's message ("Failed to log \
event", "Failed to fetch metrics", ...); when it cannot be reached, or a write waited too \
long for a lock, 503 with `Retry-After`. The service recovers by itself.

**CORS.** Every answer carries `Access-Control-Allow-Origin: *`, and OPTIONS preflights are \
answered 204. POST /track and POST /track/batch (and their preflights) answer a request that \
has an `Origin` header with that origin, `Access-Control-Allow-Credentials: true` and \
`Vary: Origin`, so that browsers accept them in any credentials mode (navigator.sendBeacon); \
the service sets no cookies.

**Access keys.** AUTH_MODE decides what needs a key: `open` (nothing; the default in \
development), `reads` (everything but ingest, /health, /openapi.json and the pages; the \
default in production) or `all` (everything but /health, /openapi.json and the pages). \
Send a key as `Authorization: Bearer ak_...`; POST /track and /track/batch also take it as \
the query parameter `key`. Scopes: `ingest`, `read`, `admin` (everything). A key in the \
Authorization header is checked in every mode. No key where one is needed: 401 \
"{auth.KEY_REQUIRED}"; an unknown or revoked key: 401 "{auth.INVALID_KEY}"; a key without \
the scope: 403 "This API key does not allow <scope>"; a key bound to origins, from another \
one: 403 "{auth.ORIGIN_NOT_ALLOWED}". A refused request stores nothing.

**Rate limits.** A key created with a rate is held to it; requests without a valid key, per \
client address, to RATE_LIMIT_ANONYMOUS. Over the limit: 429 "{ratelimits.EXCEEDED}" with \
`Retry-After`; every answer a limit applies to carries `RateLimit-Limit`, \
`RateLimit-Remaining` and `RateLimit-Reset`. A batch counts as one request. /health, \
/openapi.json, the pages and preflights are never limited."""


def build_spec(settings: Mapping[str, Any] | None = None) -> APISpec:
    """The document for the whole API, stating the limits of ``settings`` (an app's config;
    without it, the defaults)."""
    limits = Limits.of(default_settings() if settings is None else settings)
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Analytics API",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": _overview(limits)},
    )
    plugin.map_to_openapi_type(schemas.Timestamp, "string", "date-time")
    spec.components.schema("TrackEvent", schema=schemas.TrackEventSchema)
    spec.components.schema("TrackResponse", schema=schemas.TrackResponseSchema)
    spec.components.schema("Health", schema=schemas.HealthSchema)
    spec.components.schema("Error", schema=schemas.ErrorSchema)
    metadata = spec.components.schemas["TrackEvent"]["properties"]["metadata"]
    metadata["description"] += (
        f" Over {limits.metadata_bytes} bytes (its compact UTF-8 JSON; METADATA_MAX_BYTES) it "
        "is stored as a truncation notice."
    )

    _track_path(spec, limits)
    _batch_path(spec, limits)
    _period_paths(spec)
    _export_paths(spec)
    spec.path(
        path="/health",
        operations={
            "get": {
                "summary": "Whether the database answers",
                "responses": {
                    "200": {
                        "description": "Healthy",
                        "content": {JSON: {"schema": "Health", "example": {"status": "ok"}}},
                    },
                    "503": _error("Database unavailable; see Retry-After"),
                },
            }
        },
    )
    spec.path(
        path="/openapi.json",
        operations={
            "get": {
                "summary": "This document",
                "description": "Its server is PUBLIC_URL when set, else `/` (never the "
                "request's Host header).",
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


def _track_path(spec: APISpec, limits: Limits) -> None:
    """POST /track: one event."""
    logged = {"status": "success", "message": "Event logged."}
    spec.path(
        path="/track",
        operations={
            "post": {
                "summary": "Log one event",
                "description": f"""\
The body is read as JSON when sent as `application/json` (or any `+json` type), `text/plain` \
(what navigator.sendBeacon sends) or with no Content-Type; any other type is 415 (with curl, \
pass `-H 'Content-Type: application/json'`: a bare `-d` sends a form type). Unknown fields \
are ignored; a field given twice is 400 naming it ("user_id must be given only once").

- **Future timestamps** are replaced with the server's time: the stored metadata gains \
`"timestamp_warning": "{FUTURE_WARNING}"` and `"original_timestamp"` (the value sent), and \
the answer lists the warning. A timestamp too far ahead to be represented \
(`9999-12-31T23:59:59-01:00`) is a future timestamp like any other.
- **Large metadata**: over {limits.metadata_bytes} bytes (its compact UTF-8 JSON encoding; \
METADATA_MAX_BYTES), the stored metadata is replaced by `{{"warning": "{TRUNCATED_WARNING}", \
"originalSize": <bytes>}}` and the answer lists the warning.
- **Safe retries**: an event whose `user_id` and `event_id` are those of a stored event (not \
yet purged) is not stored again. The answer is still 200, with `"duplicate": true` and no \
warnings, and the event counts once everywhere. event_ids are compared exactly, within one \
user_id; events without one are never deduplicated.""",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": "TrackEvent",
                            "examples": {
                                "event": {
                                    "summary": "An event",
                                    "value": {
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
                                "future": {
                                    "summary": "A future timestamp",
                                    "value": {
                                        "event": "play",
                                        "user_id": "user123",
                                        "timestamp": "2999-01-01T00:00:00Z",
                                    },
                                },
                                "retry": {
                                    "summary": "With an event_id (send it twice: a duplicate)",
                                    "value": {
                                        "event": "play",
                                        "user_id": "user123",
                                        "event_id": "3f2b8c1e-6d0a-4f5e-9b7a-2c4d6e8f0a1b",
                                    },
                                },
                            },
                        },
                        "text/plain": {"schema": "TrackEvent"},
                    },
                },
                "responses": {
                    "200": {
                        "description": "Stored (or already stored: a duplicate)",
                        "content": {
                            JSON: {
                                "schema": "TrackResponse",
                                "examples": {
                                    "event": {"summary": "Stored as sent", "value": logged},
                                    "future": {
                                        "summary": "Stored with server time",
                                        "value": {**logged, "warnings": [FUTURE_WARNING]},
                                    },
                                    "retry": {
                                        "summary": "The same event_id again",
                                        "value": {**logged, "duplicate": True},
                                    },
                                },
                            }
                        },
                    },
                    "400": _error(
                        f'"{MALFORMED_JSON}", "Request body must be a JSON object", or a '
                        "message naming the field that breaks its rule",
                        _field_error("user_id is required", "user_id"),
                    ),
                    "413": _error(f"Body over {limits.body_bytes} bytes (MAX_REQUEST_BYTES)"),
                    "415": _error("Content-Type that is not JSON or text/plain"),
                    **_failure("Failed to log event"),
                },
            }
        },
    )


def _page_paths(spec: APISpec) -> None:
    """The browser's pages: HTML and JavaScript, the exception to JSON responses."""
    pages = {
        "/dashboard": (
            "The dashboard: charts and a table of /metrics, /sessions and /active-users",
            "text/html",
            """\
Events per period as stacked bars per event name, active users per period, sessions per \
period with their average duration, totals, a table of the same numbers and its CSV \
download, exactly as the API answers them. The controls (date range, group_by, time zone, \
first day of weeks, events, one user) live in the URL, so a view can be bookmarked and \
shared. When reads need a key, the page asks for a `read` key, keeps it in the tab's \
sessionStorage and sends it as `Authorization: Bearer`. Nothing is loaded from another host.""",
        ),
        "/docs": (
            "This reference, rendered from /openapi.json",
            "text/html",
            "Swagger UI, served by the app itself.",
        ),
        "/analytics.js": (
            "The browser tracker: analytics.init({endpoint, key}), "
            "track(event, metadata), identify(userId)",
            "text/javascript",
            """\
```html
<script src="https://analytics.example.com/analytics.js"></script>
<script>
  analytics.init({key: "ak_..."});   // an ingest key bound to your site with --origin
  analytics.track("play", {song_id: "s1"});
  analytics.identify("user123");     // later events carry this user_id
</script>
```

- `init({endpoint, key})`: `endpoint` defaults to the host the script came from; `key` is \
needed only when ingest needs one (AUTH_MODE=all), and goes in the query string.
- Until `identify`, events carry an anonymous id (`anon-<uuid>`) kept in localStorage; \
`identify(userId)` replaces it there too.
- Events wait a second for company and go to POST /track/batch together (`fetch` with \
keepalive, as text/plain: no preflight); when the page is hidden or closed, what is left \
goes with navigator.sendBeacon. Each event carries an `event_id`, so an event sent twice \
is stored once.
- A failed send (no answer, a 5xx, a 429) is retried after 1, 2, 4... up to 30 seconds, and \
at once when the browser comes back online; the queue keeps at most 1000 events, dropping \
the oldest. Events the server refuses (another 4xx) are dropped. `analytics.flush()` sends \
the queue now.""",
        ),
    }
    for path, (summary, media_type, description) in pages.items():
        spec.path(
            path=path,
            operations={
                "get": {
                    "summary": summary,
                    "description": description,
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

    def validation(refused: str | None = None) -> dict:
        """The 400 of one of the three: the shared messages, then its own refusal."""
        messages = [*schemas.PERIOD_QUERY_PRECEDENCE]
        if refused is not None:
            messages.append(refused)
        return _error(
            "Invalid query string; the first of these that applies: "
            + ", ".join(f'"{message}"' for message in messages)
            + f". With fill=zero, a range of more than {reports.MAX_FILLED_PERIODS} periods: "
            f'"fill=zero would list more than {reports.MAX_FILLED_PERIODS} periods; narrow '
            'the range or leave fill out". `errors` names the parameters concerned.',
            _field_error(schemas.INVALID_DATE, "start_date"),
        )

    same_as_metrics = (
        "The parameters, their validation, the range and the periods are those of GET /metrics."
    )
    range_note = """\
**Range and periods.** `start_date` and `end_date` are local dates in the zone `tz` \
(default UTC): the range is every event whose local date lies between them, inclusive (in \
UTC, `start_date 00:00:00Z <= timestamp < (end_date + 1 day) 00:00:00Z`). Periods are local: \
hours, labelled `YYYY-MM-DDTHH:00+HH:MM` with their UTC offset (so the hour repeated when \
clocks go back appears twice, `2025-10-26T02:00+02:00` then `2025-10-26T02:00+01:00` in \
Europe/Berlin, and the skipped hour not at all); days, labelled `YYYY-MM-DD` (23 or 25 hours \
long across a change of clocks); weeks starting on `week_start`, labelled with that day \
(2025-01-01, a Wednesday, is in the Monday week `2024-12-30`: a label may precede \
`start_date`, but only events in the range count); months, labelled `YYYY-MM-01`. Zones \
whose offset is not a whole hour (+05:30, +05:45) are exact too. Rows are in the order of \
the periods' first instants; a period without data is left out unless `fill=zero`. Exact: \
no sampling, no estimate. Other parameters are ignored; a parameter given twice counts with \
its first value (except `event`, a list)."""
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "summary": "Event counts per event name per period",
                "description": """\
Within a row the event names follow `date`, in code-point order; a name without events in \
a period is left out of it. With `fill=zero` every period of the range is listed, each with \
every event name of the answer (or every `event` asked for), 0 where there were none. \
Counts are JSON integers, for any number of events, users and names.

"""
                + range_note,
                "parameters": parameters,
                "responses": {
                    "200": {
                        "description": "Counts per period, ascending",
                        "content": {
                            JSON: {
                                "schema": "MetricsResponse",
                                "examples": {
                                    "day": {
                                        "summary": "By day",
                                        "value": {
                                            "status": "success",
                                            "data": [
                                                {
                                                    "date": "2025-01-01",
                                                    "pause": 5,
                                                    "play": 24,
                                                    "stop": 22,
                                                },
                                                {"date": "2025-01-02", "play": 3, "purchase": 1},
                                            ],
                                        },
                                    },
                                    "hour": {
                                        "summary": "By hour in Europe/Berlin, as clocks go back "
                                        "on 2025-10-26",
                                        "value": {
                                            "status": "success",
                                            "data": [
                                                {"date": "2025-10-26T02:00+02:00", "play": 3},
                                                {"date": "2025-10-26T02:00+01:00", "play": 1},
                                            ],
                                        },
                                    },
                                    "fill": {
                                        "summary": "fill=zero over three days",
                                        "value": {
                                            "status": "success",
                                            "data": [
                                                {"date": "2025-01-01", "play": 2},
                                                {"date": "2025-01-02", "play": 0},
                                                {"date": "2025-01-03", "play": 1},
                                            ],
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "400": validation(),
                    **_failure("Failed to fetch metrics"),
                },
            }
        },
    )
    spec.path(
        path="/sessions",
        operations={
            "get": {
                "summary": "Play/stop session statistics per period",
                "description": """\
**Pairing.** For each `stop`, the same user's most recent earlier `play`-or-`stop` event \
(by timestamp, then arrival) is found, over the user's whole history; when it is a `play`, \
the two make one session. So `play, stop` is one session; `play, stop, play, stop` two; in \
`play, play, stop` the second play is paired and the first stays incomplete; in \
`play, stop, stop` the second stop makes none; a stop without a play before it, or a play \
never stopped, makes none. Other events between a play and its stop do not interrupt it. \
Event names are exact and case-sensitive (`Play` is not `play`).

**Durations** are the stop's timestamp minus the play's, exact to the microsecond stored; a \
0-second session is a session. `totalDuration` and `averageDuration` (the total over \
`sessionCount`) are whole seconds, halves rounded up (0.5 s is 1, 2.5 s is 3). A session \
belongs to the period of its play and is in the range when its play is (its stop may come \
after `end_date`). With `fill=zero` an empty period is all zeros. The parameter `event` is \
refused here.

"""
                + same_as_metrics,
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
                                            "date": "2024-12-30",
                                            "totalDuration": 7200,
                                            "sessionCount": 15,
                                            "averageDuration": 480,
                                        }
                                    ],
                                },
                            }
                        },
                    },
                    "400": validation(schemas.not_a_parameter("event", "/sessions")),
                    **_failure("Failed to fetch session metrics"),
                },
            }
        },
    )
    spec.path(
        path="/active-users",
        operations={
            "get": {
                "summary": "Distinct active users per period",
                "description": """\
How many distinct user_ids sent at least one event (one of the `event` parameters, when \
given) in each period: daily, weekly or monthly active users. A user active on Monday and \
Tuesday counts once in that week. With `fill=zero` an empty period is `{"users": 0}`. The \
parameter `user_id` is refused here.

"""
                + same_as_metrics,
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
                                        {"date": "2024-12-30", "users": 1250},
                                        {"date": "2025-01-06", "users": 1184},
                                    ],
                                },
                            }
                        },
                    },
                    "400": validation(schemas.not_a_parameter("user_id", "/active-users")),
                    **_failure("Failed to fetch active users"),
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
            "2025-01-18T14:30:00.000Z,play,user123,,2025-01-18T14:30:00.120Z,"
            '"{""song_id"":""song456""}"\r\n',
        }
    }
    stream_note = (
        "Oldest first (by timestamp, then arrival), streamed as it is read: memory stays flat "
        "at any size, and behind nginx the answer is not buffered. Each line has event, "
        "user_id, timestamp, metadata, event_id and received_at, in that order; times are "
        "ISO 8601 in UTC with milliseconds and Z (microseconds too where the stored time has "
        "them); absent values are null. A failure before the first byte is the usual JSON "
        "500/503; one after it cuts the stream short (no terminating chunk), so an "
        "interrupted export can be told from a complete one."
    )
    path_note = (
        " The id in the path is percent-encoded as encodeURIComponent writes it: `/` as "
        "`%2F` (a bare `/` separates segments: /users/a/b is a 404), a space as `%20`, "
        "non-ASCII characters as their UTF-8 bytes (`é` is `%C3%A9`)."
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
                "description": stream_note
                + " The range, tz, event and user_id are those of /metrics, validated with "
                "its messages in the same order; group_by, week_start and fill are ignored. "
                "CSV: the header timestamp,event,user_id,event_id,received_at,metadata; a field "
                "holding a quote, a comma or a line break is quoted, its quotes doubled; "
                "metadata as compact JSON text; an absent value is an empty field. "
                "`flask --app wsgi import` reads either format back: an export imported into "
                "an empty database gives the same /metrics and /sessions answers.",
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
                    **_failure("Failed to export events"),
                },
            }
        },
    )
    spec.path(
        path="/users/{user_id}/events",
        operations={
            "get": {
                "summary": "Every stored event of one user, as NDJSON",
                "description": stream_note
                + " An unknown user: 200 with an empty body."
                + path_note,
                "parameters": [user_id],
                "responses": {
                    "200": {"description": "The user's events, oldest first", "content": ndjson},
                    "400": _error("The id is not percent-encoded UTF-8, or holds U+0000"),
                    **_failure("Failed to export the user's events"),
                },
            }
        },
    )
    spec.path(
        path="/users/{user_id}",
        operations={
            "delete": {
                "summary": "Erase every stored event of one user",
                "description": "The events leave /metrics, /sessions and /active-users in the "
                "very transactions that delete them. They go in short batches (as the purge "
                "deletes them), so ingest goes on meanwhile; the answer comes when the last "
                "batch is committed, and events the user sends while it runs may remain. The "
                "user's event_ids may be used again afterwards. Each erasure is logged with its "
                "time, the key's name and the count, never the user's id." + path_note,
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
                    **_failure("Failed to delete the user's events"),
                },
            }
        },
    )


@bp.get("/openapi.json")
def openapi_document() -> Response:
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = add_security(
            build_spec(current_app.config).to_dict(), current_app.config["AUTH_MODE"]
        )
    # The configured public URL, else a relative one: never the request's Host header, which
    # any client can set to send the tools that read this document elsewhere.
    server = {"url": current_app.config["PUBLIC_URL"] or "/"}
    return jsonify({**current_app.extensions["openapi"], "servers": [server]})


# The batch that the reference shows, with the answer it gets from an empty database.
BATCH_EXAMPLE = {
    "events": [
        {
            "event": "play",
            "user_id": "user123",
            "timestamp": "2025-01-18T14:30:00Z",
            "event_id": "a1",
        },
        {
            "event": "stop",
            "user_id": "user123",
            "timestamp": "2999-01-01T00:00:00Z",
            "event_id": "a2",
        },
        {
            "event": "play",
            "user_id": "user123",
            "timestamp": "2025-01-18T14:30:00Z",
            "event_id": "a1",
        },
        {"event": "play"},
    ]
}
BATCH_ANSWER = {
    "status": "success",
    "accepted": 2,
    "duplicates": 1,
    "rejected": [{"index": 3, "message": "user_id is required"}],
    "warnings": [{"index": 1, "warnings": [FUTURE_WARNING]}],
}


def _batch_path(spec: APISpec, limits: Limits) -> None:
    """POST /track/batch: many events, as JSON or NDJSON, maybe gzipped."""
    spec.components.schema("TrackBatch", schema=schemas.TrackBatchSchema)
    spec.components.schema("TrackBatchResponse", schema=schemas.TrackBatchResponseSchema)
    events = spec.components.schemas["TrackBatch"]["properties"]["events"]
    events["maxItems"] = limits.batch_events
    events["description"] = (
        f"1 to {limits.batch_events} events (BATCH_MAX_EVENTS). " + events["description"]
    )
    spec.path(
        path="/track/batch",
        operations={
            "post": {
                "summary": "Log many events",
                "description": f"""\
For backfills, offline clients and server-side collectors: at most {limits.batch_events} \
events (BATCH_MAX_EVENTS). Each event follows the POST /track rules (fields, timestamps, \
metadata size, event_id); an invalid one is reported and skipped, and never costs the \
valid ones.

- **The answer**: every event is in exactly one of `accepted` (stored), `duplicates` (its \
user_id and event_id are already stored, or came earlier in the same batch: the first is \
kept) and `rejected` (its 0-based `index` and the reason POST /track would give); \
`warnings` lists by index the stored events a rule changed. The stored events are committed \
together before the answer; a database failure stores none of them.
- **NDJSON**: with `Content-Type: application/x-ndjson` (or `application/ndjson`) the body is \
one event object a line. Blank lines are skipped; a line that is not a JSON object is \
rejected, its index being its position among the non-blank lines.
- **gzip**: `Content-Encoding: gzip` on either body. The size limit applies to the \
decompressed body, and decompression stops as soon as it is passed (413).
- **Retrying** a batch whose events carry event_ids is safe: what was stored the first time \
comes back as duplicates.""",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": "TrackBatch", "example": BATCH_EXAMPLE},
                        "application/x-ndjson": {
                            "schema": {
                                "type": "string",
                                "description": "One TrackEvent object a line; blank lines skipped.",
                            },
                            "example": '{"event": "play", "user_id": "u1"}\n'
                            "\n"
                            '{"event": "stop", "user_id": "u1"}\n',
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "Every event is accepted, a duplicate, or rejected",
                        "content": {
                            JSON: {
                                "schema": "TrackBatchResponse",
                                "examples": {
                                    "json": {
                                        "summary": "The JSON example",
                                        "value": BATCH_ANSWER,
                                    },
                                    "ndjson": {
                                        "summary": "The NDJSON example",
                                        "value": {
                                            "status": "success",
                                            "accepted": 2,
                                            "duplicates": 0,
                                            "rejected": [],
                                            "warnings": [],
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "400": _error(
                        f"Nothing stored: '{NOT_A_BATCH}', \"{MALFORMED_JSON}\", \"Request "
                        'body is not valid gzip data", "The batch has no events", or '
                        f'"{ALL_REJECTED}" (with `errors` mapping events[<index>] to the reason)'
                    ),
                    "413": _error(
                        f'Nothing stored: more than {limits.batch_events} events ("Too many '
                        f'events in one batch (limit {limits.batch_events})"), or a body, '
                        f"decompressed, over {limits.body_bytes} bytes"
                    ),
                    "415": _error(
                        '"Content-Type must be application/json or application/x-ndjson", or '
                        '"Content-Encoding must be gzip or identity"'
                    ),
                    **_failure("Failed to log events"),
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


def _key_note(scope: str | None) -> str:
    """Who may call an operation, whatever AUTH_MODE the document was built for."""
    if scope is None:
        return "**Key:** none, in every AUTH_MODE; never rate-limited."
    modes = [mode for mode, scopes in auth.REQUIRED_IN_MODE.items() if scope in scopes]
    allowed = f"`{scope}` or `{auth.ADMIN}`" if scope != auth.ADMIN else f"`{auth.ADMIN}`"
    where = " or ".join(f"`{mode}`" for mode in modes)
    return f"**Key:** scope {allowed}; needed when AUTH_MODE is {where}."


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
            note = _key_note(scope)
            description = operation.get("description")
            operation["description"] = f"{description}\n\n{note}" if description else note
            if scope is None:
                operation["security"] = []
                continue
            accepted: list[dict[str, list[str]]] = [{"bearerKey": []}]
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
