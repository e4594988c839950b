"""GET /events: the stored events of a range, oldest first, streamed as NDJSON or CSV."""

from __future__ import annotations

from flask import Blueprint, Response, request

from analytics import export
from analytics.api.query import load_events_query
from analytics.db import get_engine
from analytics.errors import failure_message

bp = Blueprint("export", __name__)


def streamed(chosen: export.EventFilter, fmt: str) -> Response:
    """The export of the chosen events as a streamed response (the query has started and
    answered before this returns, so a database failure is still a JSON error)."""
    response = Response(
        export.export_chunks(get_engine(), chosen, fmt), content_type=export.MEDIA_TYPES[fmt]
    )
    # nginx passes each chunk on as it comes instead of buffering the export to disk.
    response.headers["X-Accel-Buffering"] = "no"
    return response


@bp.get("/events")
@failure_message("Failed to export events")
def events() -> Response:
    query = load_events_query(request.args)
    start, end = export.local_range(query["start_date"], query["end_date"], query["tz"])
    chosen = export.EventFilter(
        start=start, end=end, events=query["event"], user_id=query.get("user_id")
    )
    return streamed(chosen, query["format"])
