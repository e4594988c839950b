"""Marshmallow schemas: what comes in and what goes out. The OpenAPI document is built from them."""
from __future__ import annotations

from marshmallow import (EXCLUDE, Schema, ValidationError, fields, post_load, pre_load,
                         validate, validates)

from analytics.ingest import parse_timestamp

NAME_MAX_CHARS = 255


def find_nul(value, path: str = "") -> str | None:
    """The path of the first string (key or value) that contains U+0000, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return path or str(key)
            found = find_nul(item, child)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_nul(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _not_blank(name: str):
    def check(value: str) -> None:
        if not value.strip():
            raise ValidationError(f"{name} must contain at least one non-whitespace character")
    return check


def name_field(name: str, **kwargs) -> fields.String:
    """A required, non-blank string of at most 255 characters (event names, user ids)."""
    return fields.String(
        required=True,
        validate=[
            _not_blank(name),
            validate.Length(max=NAME_MAX_CHARS,
                            error=f"{name} must be at most {NAME_MAX_CHARS} characters"),
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

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("timestamp must be a string in ISO 8601 format, "
                                  "e.g. 2025-01-18T14:30:00Z")
        try:
            return parse_timestamp(value)
        except ValueError as exc:
            raise ValidationError(f"timestamp {exc}") from None


class TrackEventSchema(Schema):
    """One event, as POST /track receives it."""

    class Meta:
        unknown = EXCLUDE

    event = name_field("event", metadata={
        "description": 'Event name, e.g. "play". "date" is reserved.', "example": "play"})
    user_id = name_field("user_id", metadata={"example": "user123"})
    timestamp = Timestamp(
        load_default=None, allow_none=True,
        metadata={"type": "string", "format": "date-time", "example": "2025-01-18T14:30:00Z",
                  "description": "When it happened; server time when absent. A future time is "
                                 "replaced with server time and a warning."},
    )
    metadata = fields.Dict(
        load_default=None, allow_none=True,
        error_messages={"invalid": "metadata must be a JSON object"},
        metadata={"description": "Any JSON object. Over 4096 bytes (compact UTF-8 JSON) it is "
                                 "replaced by a truncation notice.",
                  "example": {"song_id": "song456", "device": "mobile"}},
    )

    @pre_load
    def refuse_nul(self, data, **kwargs):
        path = find_nul(data)
        if path is not None:
            top = path.split(".")[0].split("[")[0]
            raise ValidationError({top: [f"{top} must not contain NUL (U+0000) characters"]})
        return data

    @validates("event")
    def event_not_reserved(self, value, **kwargs):
        if value == "date":
            raise ValidationError('event "date" is reserved')

    @post_load(pass_original=True)
    def keep_raw_timestamp(self, data, original, **kwargs):
        data["raw_timestamp"] = original.get("timestamp")
        return data


class StatusSchema(Schema):
    status = fields.String(required=True, metadata={"example": "success"})


class TrackResponseSchema(StatusSchema):
    message = fields.String(required=True, metadata={"example": "Event logged."})
    warnings = fields.List(fields.String(), metadata={
        "description": "Present when a rule changed what was stored."})


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})


class ErrorSchema(Schema):
    status = fields.String(required=True, metadata={"example": "error"})
    message = fields.String(required=True, metadata={"example": "user_id is required"})
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                         metadata={"description": "Messages per offending field."})


def validation_message(messages: dict) -> str:
    """One sentence from marshmallow's {field: [messages]} (nested dicts flattened)."""
    flat: list[str] = []

    def walk(value):
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
