"""Reading request input: the body read whole by its framing, which content types are JSON,
strict JSON decoding, gzip-encoded bodies decoded within the size limit, and the NUL guard on
query strings (bodies are checked by their schemas)."""

from __future__ import annotations

import json
import math
import re
import zlib
from typing import Any, NoReturn

from flask import Flask, Request, request
from werkzeug.exceptions import RequestEntityTooLarge

from analytics.errors import APIError

MALFORMED_JSON = "Malformed JSON in request body"
MALFORMED_BODY = "Malformed request body"
_READ_SIZE = 64 * 1024


def is_json_mimetype(mimetype: str) -> bool:
    """application/json, any +json type, text/plain (sendBeacon) or none at all."""
    return mimetype in ("", "application/json", "text/plain") or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


class RepeatedKeys(dict):
    """A JSON object in which some names were given more than once (``repeated``, in order of
    appearance); as a dict it holds each name's last value."""

    __slots__ = ("repeated",)
    repeated: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The names are counted here because the dict built from them no longer shows a repeat.
    document = dict(pairs)
    if len(document) == len(pairs):
        return document
    seen: set[str] = set()
    names = []
    for name, _ in pairs:
        if name in seen:
            names.append(name)
        seen.add(name)
    repeated = RepeatedKeys(document)
    repeated.repeated = list(dict.fromkeys(names))
    return repeated


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# What json.loads(text, parse_constant=..., ...) builds on every call, built once: bulk ingest
# decodes one document per line.
_STRICT_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_json_object
)


def loads_strict(data: bytes | str) -> Any:
    """json.loads without NaN/Infinity and without numbers that overflow a double.

    Raises APIError 400 on anything that is not one JSON document.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        if text.startswith("\ufeff"):
            text = text[1:]
        document = _STRICT_DECODER.decode(text)
        if _SURROGATE_ESCAPE.search(text):
            # "\ud800" without its pair is JSON syntax for a string that is not Unicode text:
            # no database can store it, so it is refused here rather than failing a write.
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        return document
    except (UnicodeError, ValueError, RecursionError):
        raise APIError(400, MALFORMED_JSON) from None


def read_raw_body(request: Request, limit: int) -> bytes:
    """The body exactly as sent, or an error: 413 past ``limit`` whether its length was declared
    or it came chunked, 400 when it is shorter than its Content-Length or badly chunked.

    Werkzeug's own reading stops quietly at the limit of a chunked body and at the end of a
    short one, so a part of the body would pass for the whole of it.
    """
    environ = request.environ
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestEntityTooLarge()
    if declared is None and not environ.get("wsgi.input_terminated"):
        return b""  # neither a length nor a server that ends the stream: no body
    wanted = limit + 1 if declared is None else declared
    stream = environ["wsgi.input"]
    data = bytearray()
    try:
        while len(data) < wanted:
            chunk = stream.read(min(_READ_SIZE, wanted - len(data)))
            if not chunk:
                break
            data += chunk
    except Exception:  # noqa: BLE001 - the server's own errors for bad chunked framing
        raise APIError(400, MALFORMED_BODY) from None
    if declared is None and len(data) > limit:
        raise RequestEntityTooLarge()
    if declared is not None and len(data) < declared:
        raise APIError(400, MALFORMED_BODY)
    return bytes(data)


def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped when ``Content-Encoding: gzip`` says it is compressed.

    The limit applies to the decompressed bytes, and decompression stops as soon as it is
    passed (413), so a small compressed body cannot blow up into gigabytes in memory.
    Any other content coding is a 415; a body that is not gzip after all, a 400.
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise APIError(415, "Content-Encoding must be gzip or identity")
    data = read_raw_body(request, limit)
    if encoding in ("", "identity"):
        return data
    return _gunzip(data, limit)


def _gunzip(data: bytes, limit: int) -> bytes:
    output = bytearray()
    try:
        while True:  # one pass per gzip member: concatenated members are one valid stream
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = data
            while not decompressor.eof:
                # Never ask for more than one byte past the limit.
                chunk = decompressor.decompress(pending, limit + 1 - len(output))
                output += chunk
                if len(output) > limit:
                    raise RequestEntityTooLarge()
                pending = decompressor.unconsumed_tail
                if not chunk and not pending:
                    raise APIError(400, "Request body is truncated gzip data")
            data = decompressor.unused_data
            if not data.strip(b"\x00"):  # trailing zero padding, as gzip(1) tolerates
                return bytes(output)
    except zlib.error:
        raise APIError(400, "Request body is not valid gzip data") from None


def read_json_body(request: Request, limit: int) -> Any:
    """The request body as parsed JSON, or an APIError (415 wrong type, 400 malformed, 413)."""
    if not is_json_mimetype(request.mimetype):
        raise APIError(415, "Content-Type must be application/json")
    return loads_strict(read_raw_body(request, limit))


def read_json_object(request: Request, limit: int) -> dict:
    body = read_json_body(request, limit)
    if not isinstance(body, dict):
        raise APIError(400, "Request body must be a JSON object")
    return body


def init_app(app: Flask) -> None:
    @app.before_request
    def _refuse_nul_in_query() -> None:
        for key, value in request.args.items(multi=True):
            if "\x00" in key or "\x00" in value:
                name = key.replace("\x00", "") or "query"
                raise APIError(400, f"{name} must not contain NUL (U+0000) characters")
