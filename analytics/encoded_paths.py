"""Ids in paths: ``/users/<user_id>`` routes see the id exactly as the client percent-encoded it.

A WSGI server decodes the path before the application sees it, so ``/users/a%2Fb/events``
would arrive as ``/users/a/b/events``, and a ``/`` inside an id could not be told from one
between segments. The raw request target is still there (``RAW_URI`` from gunicorn and
werkzeug, ``REQUEST_URI`` from others): for paths under PREFIXES this middleware routes on it,
and the view decodes the id itself (``decode_segment``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

from analytics.errors import APIError

PREFIXES = ("/users/",)


class EncodedIds:
    """WSGI middleware: PATH_INFO of the paths under PREFIXES is the raw, still encoded path."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw and path.startswith(PREFIXES):
            raw_path = raw.split("?", 1)[0].split("#", 1)[0]
            if not raw_path.startswith("/"):  # the absolute form, http://host/users/...
                raw_path = urlsplit(raw_path).path
            script = environ.get("SCRIPT_NAME", "")
            if raw_path.startswith(script):
                raw_path = raw_path[len(script) :]
            if raw_path.startswith(PREFIXES):
                environ["PATH_INFO"] = raw_path
        return self.app(environ, start_response)


def decode_segment(name: str, raw: str) -> str:
    """A path segment as the client meant it: percent-decoded UTF-8. APIError 400 when it is
    not UTF-8 or holds U+0000, as anywhere else in a request."""
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise APIError(400, f"{name} must be percent-encoded UTF-8") from None
    if "\x00" in value:
        raise APIError(400, f"{name} must not contain NUL (U+0000) characters")
    return value
