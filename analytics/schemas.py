"""Marshmallow schemas: what comes in and what goes out. The OpenAPI document is built from them."""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Callable
from datetime import date
from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates,
    validates_schema,
)

from analytics.ingest import parse_timestamp
from analytics.inputs import RepeatedKeys
from analytics.periods import GROUP_BYS, WEEKDAYS

NAME_MAX_CHARS = 255
EVENT_ID_MAX_CHARS = 128
METADATA_MAX_LEVELS = 64
METADATA_TOO_DEEP = f"metadata is nested too deeply (at most {METADATA_MAX_LEVELS} levels)"


def has_nul(value: object) -> bool:
    """Whether any string (key or value) in a parsed JSON document contains U+0000."""
    # Iterative: a document may be nested deeper than Python's recursion allows.
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            if any("\x00" in key for key in node):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def json_text_is_nul_free(text: bytes) -> bool:
    """Whether no string (key or value) parsed from this JSON text can contain U+0000: strict
    JSON writes that character only as the escape \\u0000 (raw control characters are refused
    by the parser), so its absence from the text is proof. One scan of a whole batch replaces
    a walk through every string of every event."""
    return b"\\u0000" not in text


def find_nul(value: object, path: str = "") -> str | None:
    """The path of the first string (key or value) that contains U+0000, or None."""
    if not has_nul(value):
        return None  # the common case, without building a path for every value
    # Entries: (node, its path, the path of the object holding it, its key there). Children
    # are pushed in reverse so that they are looked at in document order.
    stack: list[tuple[Any, str, str, str | None]] = [(value, path, "", None)]
    while stack:
        node, where, parent, key = stack.pop()
        if key is not None and "\x00" in key:
            return parent or key
        if isinstance(node, str):
            if "\x00" in node:
                return where
        elif isinstance(node, dict):
            stack.extend(
                reversed(
                    [
                        (item, f"{where}.{name}" if where else str(name), where, name)
                        for name, item in node.items()
                    ]
                )
            )
        elif isinstance(node, list):
            stack.extend(
                reversed(
                    [(item, f"{where}[{index}]", where, None) for index, item in enumerate(node)]
                )
            )
    return None


def nested_deeper_than(value: object, levels: int) -> bool:
    """Whether a JSON object or array holds containers more than ``levels`` deep (the value
    itself is level 1, each object or array inside adds one)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > levels:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _not_too_deep(metadata: dict) -> None:
    if nested_deeper_than(metadata, METADATA_MAX_LEVELS):
        raise ValidationError(METADATA_TOO_DEEP)


def repeated_field(name: str) -> str:
    return f"{name} must be given only once"


def _not_blank(name: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not value.strip():
            raise ValidationError(f"{name} must contain at least one non-whitespace character")

    return check


# For the OpenAPI document: no U+0000 anywhere (refused in every string of a request), and in
# names at least one character that is not whitespace.
NO_NUL_PATTERN = "^[^\\u0000]*$"
NAME_PATTERN = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"


def name_field(name: str, **kwargs: Any) -> fields.String:
    """A required, non-blank string of at most 255 characters (event names, user ids)."""
    kwargs["metadata"] = {"minLength": 1, "pattern": NAME_PATTERN, **kwargs.get("metadata", {})}
    return fields.String(
        required=True,
        validate=[
            _not_blank(name),
            validate.Length(
                max=NAME_MAX_CHARS, error=f"{name} must be at most {NAME_MAX_CHARS} characters"
            ),
        ],
        error_messages={
            "required": f"{name} is required",
            "null": f"{name} is required",
            "invalid": f"{name} must be a string",
        },
        **kwargs,
    )


class Timestamp(fields.Field):
    """An ISO 8601 date and time with optional offset (UTC when absent), as an aware datetime."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str):
            raise ValidationError(
                "timestamp must be a string in ISO 8601 format, e.g. 2025-01-18T14:30:00Z"
            )
        try:
            return parse_timestamp(value)
        except ValueError as exc:
            raise ValidationError(f"timestamp {exc}") from None


class TrackEventSchema(Schema):
    """One event, as POST /track receives it."""

    class Meta:
        unknown = EXCLUDE

    event = name_field(
        "event",
        metadata={
            "description": '"date" is reserved: it labels the periods of /metrics.',
            "example": "play",
            "not": {"enum": ["date"]},
        },
    )
    user_id = name_field("user_id", metadata={"example": "user123"})
    timestamp = Timestamp(
        load_default=None,
        allow_none=True,
        metadata={
            "type": "string",
            "format": "date-time",
            "example": "2025-01-18T14:30:00Z",
            "description": "When it happened; server time when absent. A future time is "
            "replaced with server time and a warning.",
        },
    )
    metadata = fields.Dict(
        load_default=None,
        allow_none=True,
        validate=_not_too_deep,
        error_messages={"invalid": "metadata must be a JSON object"},
        metadata={
            # The size limit is a setting: the OpenAPI document adds it (api/openapi.py).
            "description": f"Any JSON object, nested at most {METADATA_MAX_LEVELS} levels deep "
            "(the object is level 1; each object or array inside adds one). A key given twice "
            "keeps its last value.",
            "example": {"song_id": "song456", "device": "mobile"},
        },
    )

    event_id = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(
            min=1,
            max=EVENT_ID_MAX_CHARS,
            error=f"event_id must be 1 to {EVENT_ID_MAX_CHARS} characters",
        ),
        error_messages={"invalid": "event_id must be a string"},
        metadata={
            "pattern": NO_NUL_PATTERN,
            "description": "Chosen by the client (a UUID is recommended): an event whose "
            "user_id and event_id match a stored event is not stored "
            "again. Absent or null: never deduplicated.",
            "example": "3f2b8c1e-6d0a-4f5e-9b7a-2c4d6e8f0a1b",
        },
    )

    @pre_load
    def refuse_repeated_fields(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, RepeatedKeys):
            raise ValidationError({name: [repeated_field(name)] for name in data.repeated})
        return data

    @pre_load
    def refuse_nul(self, data: Any, **kwargs: Any) -> Any:
        path = find_nul(data)
        if path is not None:
            top = path.split(".")[0].split("[")[0]
            raise ValidationError({top: [f"{top} must not contain NUL (U+0000) characters"]})
        return data

    @validates("event")
    def event_not_reserved(self, value: str, **kwargs: Any) -> None:
        if value == "date":
            raise ValidationError('event "date" is reserved')

    @post_load(pass_original=True)
    def keep_raw_timestamp(
        self, data: dict[str, Any], original: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        data["raw_timestamp"] = original.get("timestamp")
        return data


def quick_load_event(item: object, nul_free: bool = False) -> dict[str, Any] | None:
    """What ``TrackEventSchema().load(item)`` returns, for an item that plainly follows every
    rule; None when anything needs a closer look (the schema then decides, and words the error).
    ``nul_free``: the caller knows that no string in the item contains U+0000 (see
    ``json_text_is_nul_free``), so it is not looked for again.

    The schema stays the definition of the rules (and the source of every message and of the
    OpenAPI document); this is the same checks without marshmallow's per-field machinery, which
    costs several times as much per event in batches and imports. A property test holds the two
    to the same answers.
    """
    if type(item) is not dict:
        return None
    event, user_id = item.get("event"), item.get("user_id")
    if (
        type(event) is not str
        or type(user_id) is not str
        or event == "date"
        or not 0 < len(event) <= NAME_MAX_CHARS
        or not 0 < len(user_id) <= NAME_MAX_CHARS
        or not event.strip()
        or not user_id.strip()
    ):
        return None
    timestamp, metadata, event_id = (
        item.get("timestamp"),
        item.get("metadata"),
        item.get("event_id"),
    )
    if metadata is not None and (
        type(metadata) is not dict or nested_deeper_than(metadata, METADATA_MAX_LEVELS)
    ):
        return None
    if event_id is not None and (
        type(event_id) is not str or not 0 < len(event_id) <= EVENT_ID_MAX_CHARS
    ):
        return None
    if timestamp is None:
        when = None
    elif type(timestamp) is str:
        try:
            when = parse_timestamp(timestamp)
        except ValueError:
            return None
    else:
        return None
    if not nul_free and has_nul(item):
        return None
    return {
        "event": event,
        "user_id": user_id,
        "timestamp": when,
        "metadata": metadata,
        "event_id": event_id,
        "raw_timestamp": timestamp,
    }


class StatusSchema(Schema):
    status = fields.String(required=True, metadata={"example": "success"})


class TrackResponseSchema(StatusSchema):
    message = fields.String(required=True, metadata={"example": "Event logged."})
    warnings = fields.List(
        fields.String(), metadata={"description": "Present when a rule changed what was stored."}
    )
    duplicate = fields.Boolean(
        metadata={
            "description": "Present (true) when an event with this user_id and event_id was "
            "already stored: nothing was stored again, and no warnings are given."
        }
    )


class TrackBatchSchema(Schema):
    """The JSON body of POST /track/batch (documentation only: items are checked one by one)."""

    class Meta:
        unknown = EXCLUDE

    # Items are declared as any value: each is checked alone, and an invalid one is reported
    # in the 200 answer's "rejected" rather than refusing the request.
    events = fields.List(
        fields.Raw(
            metadata={
                "description": "An event following the POST /track rules (see TrackEvent); one "
                "that does not is rejected by its index, the others are stored."
            }
        ),
        required=True,
        # maxItems is a setting (BATCH_MAX_EVENTS): the OpenAPI document adds it.
        metadata={
            "minItems": 1,
            "description": "A batch in which every event is rejected is a 400 and stores nothing.",
        },
    )


class BatchRejectedSchema(Schema):
    index = fields.Integer(
        required=True,
        metadata={"description": "0-based position in events (NDJSON: among the non-blank lines)."},
    )
    message = fields.String(required=True, metadata={"example": "user_id is required"})


class BatchWarningsSchema(Schema):
    index = fields.Integer(
        required=True, metadata={"description": "0-based position in events, as in rejected."}
    )
    warnings = fields.List(
        fields.String(),
        required=True,
        metadata={"example": ["Future timestamp replaced with server time"]},
    )


class TrackBatchResponseSchema(StatusSchema):
    accepted = fields.Integer(required=True, metadata={"description": "Events stored."})
    duplicates = fields.Integer(
        required=True,
        metadata={
            "description": "Events not stored because their user_id and event_id were already "
            "stored, or came earlier in the same batch."
        },
    )
    rejected = fields.List(
        fields.Nested(BatchRejectedSchema),
        required=True,
        metadata={"description": "Invalid events, skipped."},
    )
    warnings = fields.List(
        fields.Nested(BatchWarningsSchema),
        required=True,
        metadata={"description": "Stored events that a rule changed, as in POST /track."},
    )


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})


class ErrorSchema(Schema):
    status = fields.String(required=True, metadata={"example": "error"})
    message = fields.String(required=True, metadata={"example": "user_id is required"})
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Messages per offending field."},
    )


def ordered_errors(schema: Schema, messages: dict) -> dict:
    """Field errors in the order the schema declares its fields (unknown names last)."""
    order = list(schema.fields)
    return dict(
        sorted(
            messages.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)
        )
    )


def validation_message(messages: dict) -> str:
    """One sentence from marshmallow's {field: [messages]} (nested dicts flattened)."""
    flat: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            flat.append(str(value))

    walk(messages)
    return "; ".join(flat) if flat else "Invalid request"


# --- GET /metrics and GET /sessions -----------------------------------------------------------

DATES_REQUIRED = "start_date and end_date are required"
INVALID_DATE = "Invalid date format. Use YYYY-MM-DD"
DATES_OUT_OF_ORDER = "start_date must not be after end_date"
INVALID_GROUP_BY = "group_by must be one of: hour, day, week, month"
INVALID_TZ = "tz must be an IANA time zone name, e.g. Europe/Berlin"
INVALID_WEEK_START = "week_start must be a day of the week, e.g. monday"
EMPTY_EVENT = "event must not be empty"
TOO_MANY_EVENTS = "at most 50 event names"
MAX_EVENT_FILTERS = 50
INVALID_FILL = "fill must be one of: none, zero"
FILLS = ("none", "zero")


def not_a_parameter(name: str, endpoint: str) -> str:
    return f"{name} is not a parameter of {endpoint}"


# When several parameters are wrong, the answer is the first of these that applies; the
# "is not a parameter" messages come last.
PERIOD_QUERY_PRECEDENCE = (
    DATES_REQUIRED,
    INVALID_DATE,
    DATES_OUT_OF_ORDER,
    INVALID_GROUP_BY,
    INVALID_TZ,
    INVALID_WEEK_START,
    EMPTY_EVENT,
    TOO_MANY_EVENTS,
    INVALID_FILL,
)


@functools.cache
def time_zone_names() -> frozenset[str]:
    """Every name of the tz database, spelt as it spells them."""
    return frozenset(zoneinfo.available_timezones())


def _time_zone(value: str) -> None:
    if value not in time_zone_names():
        raise ValidationError(INVALID_TZ)


def _weekday(value: str) -> None:
    if value.lower() not in WEEKDAYS:
        raise ValidationError(INVALID_WEEK_START)


# ASCII digits only: \d would also accept other scripts' digits, which date.fromisoformat reads.
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class QueryDate(fields.Date):
    """A calendar date written exactly ``YYYY-MM-DD``; empty counts as missing."""

    default_error_messages = {
        "required": DATES_REQUIRED,
        "null": DATES_REQUIRED,
        "invalid": INVALID_DATE,
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value == "":
            raise self.make_error("required")
        if not isinstance(value, str) or not _DATE_TEXT.fullmatch(value):
            raise self.make_error("invalid")
        try:
            return date.fromisoformat(value)
        except ValueError:  # 2024-13-45, 2025-02-30
            raise self.make_error("invalid") from None


class PeriodQuerySchema(Schema):
    """The query string of GET /metrics and GET /sessions."""

    class Meta:
        unknown = EXCLUDE

    start_date = QueryDate(
        required=True,
        metadata={
            "description": "First day of the range, inclusive (a local date in tz).",
            "example": "2025-01-01",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        },
    )
    end_date = QueryDate(
        required=True,
        metadata={
            "description": "Last day of the range, inclusive (a local date in tz).",
            "example": "2025-01-31",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        },
    )
    group_by = fields.String(
        load_default="day",
        validate=validate.OneOf(GROUP_BYS, error=INVALID_GROUP_BY),
        error_messages={"invalid": INVALID_GROUP_BY, "null": INVALID_GROUP_BY},
        metadata={
            "description": "Period of each row: local hour, day, week (labelled with "
            "its first day) or month (labelled YYYY-MM-01).",
            "example": "day",
        },
    )
    user_id = fields.String(
        metadata={
            "description": "Only this user's events (exact match). Empty means all users.",
            "example": "user123",
            "pattern": NO_NUL_PATTERN,
        }
    )
    tz = fields.String(
        load_default="UTC",
        validate=_time_zone,
        error_messages={"invalid": INVALID_TZ, "null": INVALID_TZ, "validator_failed": INVALID_TZ},
        metadata={
            "description": "IANA time zone of the dates, days and hours "
            "(spelt as in the tz database).",
            "example": "Europe/Berlin",
            "enum": sorted(time_zone_names()),
        },
    )
    week_start = fields.String(
        load_default="monday",
        validate=_weekday,
        error_messages={
            "invalid": INVALID_WEEK_START,
            "null": INVALID_WEEK_START,
            "validator_failed": INVALID_WEEK_START,
        },
        metadata={
            "description": "The day weeks start on, any case.",
            "example": "sunday",
            "pattern": "^("
            + "|".join("".join(f"[{c.upper()}{c}]" for c in day) for day in WEEKDAYS)
            + ")$",
        },
    )
    event = fields.List(
        fields.String(
            validate=validate.Length(min=1, error=EMPTY_EVENT),
            error_messages={"invalid": EMPTY_EVENT},
            metadata={"pattern": NO_NUL_PATTERN},
        ),
        validate=validate.Length(max=MAX_EVENT_FILTERS, error=TOO_MANY_EVENTS),
        metadata={"description": "Only these events count (repeat the parameter for several)."},
    )
    fill = fields.String(
        load_default="none",
        validate=validate.OneOf(FILLS, error=INVALID_FILL),
        error_messages={"invalid": INVALID_FILL, "null": INVALID_FILL},
        metadata={
            "description": "zero: list every period of the range, empty ones with 0.",
            "example": "zero",
        },
    )

    @pre_load
    def empty_user_id_means_all(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("user_id") == "":
            data = {key: value for key, value in data.items() if key != "user_id"}
        return data

    @validates_schema(skip_on_field_errors=False)
    def start_not_after_end(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, end = data.get("start_date"), data.get("end_date")
        if start is not None and end is not None and start > end:
            raise ValidationError(DATES_OUT_OF_ORDER, field_name="start_date")


def period_query_error(messages: dict) -> tuple[str, dict[str, list[str]]]:
    """The one message to answer for a PeriodQuerySchema failure, and the fields it concerns,
    by PERIOD_QUERY_PRECEDENCE."""
    found_messages = {name: _flat(found) for name, found in messages.items()}
    for message in PERIOD_QUERY_PRECEDENCE:
        concerned = {name: [message] for name, found in found_messages.items() if message in found}
        if concerned:
            return message, concerned
    return validation_message(messages), messages


def _flat(found: object) -> list[str]:
    """The messages of a field, those of a list's items included."""
    if isinstance(found, dict):
        return [message for item in found.values() for message in _flat(item)]
    if isinstance(found, list):
        return [message for item in found for message in _flat(item)]
    return [str(found)]


class MetricsRowSchema(Schema):
    """One period of GET /metrics: its label, then one count per event name seen in it."""

    class Meta:
        description = (
            "The period's label, and for each event name that occurred in the "
            "period, its count (names with no event are left out)."
        )

    date = fields.String(
        required=True,
        metadata={
            "description": "The period's label: YYYY-MM-DD for a day, the first day of a week "
            "or YYYY-MM-01 for a month, YYYY-MM-DDTHH:00+HH:MM for an hour.",
            "example": "2025-01-01",
        },
    )


class MetricsResponseSchema(StatusSchema):
    data = fields.List(
        fields.Nested(MetricsRowSchema),
        required=True,
        metadata={"description": "One object per period with events, in ascending date order."},
    )


class SessionsRowSchema(Schema):
    """One period of GET /sessions."""

    date = fields.String(
        required=True,
        metadata={
            "description": "The label of the period of the sessions' plays, as in GET /metrics.",
            "example": "2025-01-01",
        },
    )
    totalDuration = fields.Integer(
        required=True,
        metadata={
            "description": "Sum of the sessions' durations, in seconds, rounded half up.",
            "example": 7200,
        },
    )
    sessionCount = fields.Integer(
        required=True,
        metadata={"description": "Number of sessions whose play is in the period.", "example": 15},
    )
    averageDuration = fields.Integer(
        required=True,
        metadata={
            "description": "Sum of the durations divided by their count, in seconds, rounded "
            "half up.",
            "example": 480,
        },
    )


class SessionsResponseSchema(StatusSchema):
    data = fields.List(
        fields.Nested(SessionsRowSchema),
        required=True,
        metadata={"description": "One object per period with sessions, in ascending date order."},
    )


class ActiveUsersRowSchema(Schema):
    """One period of GET /active-users."""

    date = fields.String(
        required=True,
        metadata={
            "description": "The period's label, as in GET /metrics.",
            "example": "2025-01-01",
        },
    )
    users = fields.Integer(
        required=True,
        metadata={
            "description": "Distinct user_ids with at least one counted event in the period and "
            "the range.",
            "example": 1250,
        },
    )


class ActiveUsersResponseSchema(StatusSchema):
    data = fields.List(
        fields.Nested(ActiveUsersRowSchema),
        required=True,
        metadata={"description": "One object per period with users, in ascending order."},
    )


# --- GET /events -------------------------------------------------------------------------------

EXPORT_FORMATS = ("ndjson", "csv")
INVALID_FORMAT = "format must be one of: ndjson, csv"
# The parameters of /metrics that an export has no use for (they are ignored, as any unknown
# parameter is).
NOT_EXPORT_PARAMETERS = ("group_by", "week_start", "fill")


class EventsQuerySchema(PeriodQuerySchema):
    """The query string of GET /events: the range, zone and filters of /metrics, and the
    format. Use it with ``exclude=NOT_EXPORT_PARAMETERS``."""

    format = fields.String(
        load_default="ndjson",
        validate=validate.OneOf(EXPORT_FORMATS, error=INVALID_FORMAT),
        error_messages={"invalid": INVALID_FORMAT, "null": INVALID_FORMAT},
        metadata={
            "description": "ndjson (the default): one JSON object a line; csv: RFC 4180 "
            "with a header row.",
            "example": "csv",
        },
    )


class ExportedEventSchema(Schema):
    """One event of an export (documentation only: the database writes the lines)."""

    event = fields.String(required=True, metadata={"example": "play"})
    user_id = fields.String(required=True, metadata={"example": "user123"})
    timestamp = fields.String(
        required=True,
        metadata={
            "description": "ISO 8601 in UTC with milliseconds and Z (microseconds where stored).",
            "example": "2025-01-18T14:30:00.000Z",
        },
    )
    metadata = fields.Dict(
        required=True, allow_none=True, metadata={"description": "As stored; null when absent."}
    )
    event_id = fields.String(
        required=True, allow_none=True, metadata={"description": "As sent; null when absent."}
    )
    received_at = fields.String(
        required=True,
        metadata={
            "description": "When the server received it, as timestamp.",
            "example": "2025-01-18T14:30:00.120Z",
        },
    )


class ErasureResponseSchema(StatusSchema):
    deleted = fields.Integer(
        required=True,
        metadata={"description": "Events of the user deleted by this request.", "example": 42},
    )
