"""Logging: each record written once, as text or (``LOG_FORMAT=json``) one JSON object a line;
a request id on every request, sent back as ``X-Request-Id``; and with JSON logs, one access
line per request naming the access key used (never its secret).

What a client sent (events, user ids, query strings) is never logged: the access line has the
path without its query string, and database errors are logged without their parameters.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime

from flask import Flask, Response, g, has_request_context, request
from flask.logging import default_handler

REQUEST_ID_HEADER = "X-Request-Id"
# An id from the proxy in front (nginx's $request_id) is kept when it is plainly an id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "analytics.access"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the request id and any fields
    given as ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is None and has_request_context():
            request_id = g.get("request_id")
        if request_id is not None:
            line["request_id"] = request_id
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class _OurHandler(logging.StreamHandler):
    """The one handler this app adds to the root logger (told apart from others' handlers)."""


def configure(app: Flask) -> None:
    """Log the app's records once, through one handler on the root logger."""
    level = getattr(logging, app.config["LOG_LEVEL"])
    app.logger.setLevel(level)
    # Flask's own handler on the app's logger would write every record a second time, as the
    # record also reaches the root logger's handler.
    app.logger.removeHandler(default_handler)
    formatter = (
        JsonFormatter() if app.config["LOG_FORMAT"] == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, _OurHandler)]
    if ours:
        ours[0].setFormatter(formatter)
    elif not root.handlers:  # a host that configured logging itself keeps its handlers
        handler = _OurHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)


def init_app(app: Flask) -> None:
    """The request id on every request and answer, and the JSON access line."""
    json_format = app.config["LOG_FORMAT"] == "json"
    access = logging.getLogger(ACCESS_LOGGER)

    @app.before_request
    def _start() -> None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        g.request_started = time.monotonic()

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:  # refused before _start ran
            return response
        response.headers[REQUEST_ID_HEADER] = request_id
        if json_format:
            from analytics.auth import current_access

            key = current_access().key
            access.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "fields": {
                        "method": request.method,
                        "scheme": request.scheme,
                        "host": request.host,
                        "path": request.path,
                        "status": response.status_code,
                        "duration_ms": round((time.monotonic() - g.request_started) * 1000, 1),
                        "bytes": response.calculate_content_length(),
                        "remote_addr": request.remote_addr,
                        "key": key.name if key is not None else None,
                    }
                },
            )
        return response
