"""The query string of the per-period endpoints, validated into a reports.PeriodQuery, and
that of the export (GET /events)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError
from werkzeug.datastructures import MultiDict

from analytics.errors import APIError
from analytics.periods import WEEKDAYS
from analytics.reports import PeriodQuery
from analytics.schemas import (
    NOT_EXPORT_PARAMETERS,
    EventsQuerySchema,
    PeriodQuerySchema,
    not_a_parameter,
    period_query_error,
)

_schema = PeriodQuerySchema()
_events_schema = EventsQuerySchema(exclude=NOT_EXPORT_PARAMETERS)


def _load(schema: Schema, args: MultiDict[str, str]) -> dict[str, Any]:
    """``args`` validated by ``schema``; APIError 400 with the message that comes first (see
    schemas.PERIOD_QUERY_PRECEDENCE)."""
    data: dict[str, str | list[str]] = dict(args.to_dict())  # the first value of each ...
    if "event" in args:
        data["event"] = args.getlist("event")  # ... but every event
    try:
        loaded: dict[str, Any] = schema.load(data)
        return loaded
    except ValidationError as exc:
        message, errors = period_query_error(exc.messages_dict)
        raise APIError(400, message, errors=errors) from None


def load_period_query(args: MultiDict, endpoint: str, refused: tuple[str, ...] = ()) -> PeriodQuery:
    """The validated query of ``endpoint``; APIError 400 with the contract's message (the first
    that applies, see schemas.PERIOD_QUERY_PRECEDENCE). ``refused``: parameters that this
    endpoint does not take, reported after every other problem."""
    loaded = _load(_schema, args)
    for name in refused:
        if name in args:
            message = not_a_parameter(name, endpoint)
            raise APIError(400, message, errors={name: [message]})
    return PeriodQuery(
        start=loaded["start_date"],
        end=loaded["end_date"],
        group_by=loaded["group_by"],
        tz=loaded["tz"],
        week_start=WEEKDAYS.index(loaded["week_start"].lower()),
        events=tuple(dict.fromkeys(loaded.get("event", ()))),
        user_id=loaded.get("user_id"),
        fill_zero=loaded["fill"] == "zero",
    )


def load_events_query(args: MultiDict) -> dict:
    """The validated query of GET /events: start_date, end_date, tz, event (a tuple), user_id
    (absent: every user) and format."""
    loaded = _load(_events_schema, args)
    loaded["event"] = tuple(dict.fromkeys(loaded.get("event", ())))
    return loaded
