"""Reading request input: which content types are JSON, strict JSON decoding, and the NUL guard
on query strings (bodies are checked by their schemas)."""
from __future__ import annotations

import json
import math

from flask import Flask, Request, request

from analytics.errors import APIError

MALFORMED_JSON = "Malformed JSON in request body"


def is_json_mimetype(mimetype: str) -> bool:
    """application/json, any +json type, text/plain (sendBeacon) or none at all."""
    return (mimetype in ("", "application/json", "text/plain")
            or (mimetype.startswith("application/") and mimetype.endswith("+json")))


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def loads_strict(data: bytes | str):
    """json.loads without NaN/Infinity and without numbers that overflow a double.

    Raises APIError 400 on anything that is not one JSON document.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        if text.startswith("\ufeff"):
            text = text[1:]
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise APIError(400, MALFORMED_JSON) from None


def read_json_body(request: Request):
    """The request body as parsed JSON, or an APIError (415 wrong type, 400 malformed)."""
    if not is_json_mimetype(request.mimetype):
        raise APIError(415, "Content-Type must be application/json")
    return loads_strict(request.get_data(cache=False))


def read_json_object(request: Request) -> dict:
    body = read_json_body(request)
    if not isinstance(body, dict):
        raise APIError(400, "Request body must be a JSON object")
    return body


def init_app(app: Flask) -> None:
    @app.before_request
    def _refuse_nul_in_query():
        for key, value in request.args.items(multi=True):
            if "\x00" in key or "\x00" in value:
                name = key.replace("\x00", "") or "query"
                raise APIError(400, f"{name} must not contain NUL (U+0000) characters")
