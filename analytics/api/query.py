"""The query string of the per-period endpoints, validated into a reports.PeriodQuery."""
from __future__ import annotations

from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict

from analytics.errors import APIError
from analytics.periods import WEEKDAYS
from analytics.reports import PeriodQuery
from analytics.schemas import PeriodQuerySchema, not_a_parameter, period_query_error

_schema = PeriodQuerySchema()


def load_period_query(args: MultiDict, endpoint: str, refused: tuple[str, ...] = ()
                      ) -> PeriodQuery:
    """The validated query of ``endpoint``; APIError 400 with the contract's message (the first
    that applies, see schemas.PERIOD_QUERY_PRECEDENCE). ``refused``: parameters that this
    endpoint does not take, reported after every other problem."""
    data = args.to_dict()  # the first value of each parameter ...
    if "event" in args:
        data["event"] = args.getlist("event")  # ... but every event
    try:
        loaded = _schema.load(data)
    except ValidationError as exc:
        message, errors = period_query_error(exc.messages)
        raise APIError(400, message, errors=errors) from None
    for name in refused:
        if name in args:
            message = not_a_parameter(name, endpoint)
            raise APIError(400, message, errors={name: [message]})
    return PeriodQuery(
        start=loaded["start_date"], end=loaded["end_date"], group_by=loaded["group_by"],
        tz=loaded["tz"], week_start=WEEKDAYS.index(loaded["week_start"].lower()),
        events=tuple(dict.fromkeys(loaded.get("event", ()))), user_id=loaded.get("user_id"),
        fill_zero=loaded["fill"] == "zero")
