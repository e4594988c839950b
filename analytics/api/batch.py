"""POST /track/batch: many events in one request, as a JSON object or as NDJSON, maybe gzipped.

Each event follows the POST /track rules. Invalid events are reported by position and skipped;
the valid ones are stored in one transaction, committed before the answer is sent.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, current_app, jsonify, request

from analytics import validation, writer
from analytics.db import get_session
from analytics.errors import APIError, failure_message
from analytics.inputs import RepeatedKeys, is_json_mimetype, loads_strict, read_body
from analytics.models import utcnow
from analytics.schemas import find_nul, json_text_is_nul_free, repeated_field

bp = Blueprint("batch", __name__)

NDJSON_MIMETYPES = ("application/x-ndjson", "application/ndjson")
NOT_A_BATCH = 'Request body must be a JSON object with an "events" list'
ALL_REJECTED = "Every event in the batch was rejected; nothing was stored"


def _nonblank_lines(body: bytes) -> Iterator[bytes]:
    """The non-blank lines, one at a time, so that a reader can stop early."""
    start, size = 0, len(body)
    while start < size:
        end = body.find(b"\n", start)
        if end < 0:
            end = size
        line = body[start:end].strip()  # also drops the \r of CRLF line ends
        start = end + 1
        if line:
            yield line


def _ndjson_items(body: bytes, limit: int) -> list:
    """The non-blank lines, each parsed as JSON or marked unreadable (its index still counts).
    Lines are counted before any is parsed, and counting stops past ``limit`` (413): a body of
    many tiny lines costs no parsing."""
    lines: list[bytes] = []
    for line in _nonblank_lines(body):
        if len(lines) == limit:
            raise too_many_events(limit)
        lines.append(line)
    items: list = []
    for line in lines:
        try:
            items.append(loads_strict(line))
        except APIError:
            items.append(validation.Unreadable())
    return items


def too_many_events(limit: int) -> APIError:
    return APIError(413, f"Too many events in one batch (limit {limit})")


def _json_items(body: bytes) -> list:
    document = loads_strict(body)
    if not isinstance(document, dict):
        raise APIError(400, NOT_A_BATCH)
    if isinstance(document, RepeatedKeys):
        name = document.repeated[0]
        raise APIError(400, repeated_field(name), errors={name: [repeated_field(name)]})
    events = document.get("events")
    if not isinstance(events, list):
        raise APIError(
            400, NOT_A_BATCH, errors={"events": ["events is required and must be a list of events"]}
        )
    # The items are checked one by one below; the rest of the object is checked here, because
    # no string anywhere in a request may contain U+0000.
    path = find_nul({key: value for key, value in document.items() if key != "events"})
    if path is not None:
        raise APIError(400, f"{path} must not contain NUL (U+0000) characters")
    return events


def read_batch() -> tuple[list, bool]:
    """The items of the request, in order, and whether no string in them contains U+0000;
    APIError for a body that is not a batch at all."""
    mimetype = request.mimetype
    if mimetype not in NDJSON_MIMETYPES and not is_json_mimetype(mimetype):
        raise APIError(415, "Content-Type must be application/json or application/x-ndjson")
    body = read_body(request, current_app.config["MAX_CONTENT_LENGTH"])
    limit = current_app.config["BATCH_MAX_EVENTS"]
    items = _ndjson_items(body, limit) if mimetype in NDJSON_MIMETYPES else _json_items(body)
    if len(items) > limit:
        raise too_many_events(limit)
    if not items:
        raise APIError(400, "The batch has no events")
    return items, json_text_is_nul_free(body)


@bp.post("/track/batch")
@failure_message("Failed to log events")
def track_batch() -> Response:
    items, nul_free = read_batch()
    checked = validation.check_events(
        enumerate(items),
        now=utcnow(),
        nul_free=nul_free,
        metadata_limit=current_app.config["METADATA_MAX_BYTES"],
    )
    rejected = [{"index": index, "message": message} for index, message in checked.rejected]
    if not checked.prepared:
        raise APIError(
            400,
            ALL_REJECTED,
            errors={f"events[{index}]": [message] for index, message in checked.rejected},
        )

    stored = writer.store_events(get_session(), [event.row for _, event in checked.prepared])
    warnings = [
        {"index": index, "warnings": event.warnings}
        for (index, event), was_stored in zip(checked.prepared, stored)
        if was_stored and event.warnings
    ]
    accepted = sum(stored)
    return jsonify(
        {
            "status": "success",
            "accepted": accepted,
            "duplicates": len(stored) - accepted,
            "rejected": rejected,
            "warnings": warnings,
        }
    )
