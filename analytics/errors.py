"""The JSON error envelope, ``{"status": "error", "message": ...}``, for every error the app
makes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, jsonify, request
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

View = TypeVar("View", bound=Callable[..., Any])

RETRY_AFTER_SECONDS = 5

HTTP_MESSAGES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported Content-Type",
    500: "Internal server error",
}


class APIError(Exception):
    """An error to answer with the envelope: raise it from anywhere inside a request."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"status": "error", "message": message}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def failure_message(message: str) -> Callable[[View], View]:
    """Name what a view answers when the database fails it ("Failed to log event", ...)."""

    def decorate(view: View) -> View:
        view.failure_message = message  # type: ignore[attr-defined]
        return view

    return decorate


def _view_failure_message(default: str) -> str:
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    return getattr(view, "failure_message", default)


def _rollback() -> None:
    from analytics.db import close_session

    close_session()  # closing a Session rolls back whatever it had begun


def is_unreachable(exc: BaseException) -> bool:
    """Whether a database error means the database cannot be reached (as opposed to a bug, or
    to a statement that gave up waiting for a lock: the database is there, and busy)."""
    from analytics import dialects

    if dialects.is_lock_timeout(exc):
        return False
    if isinstance(exc, (DisconnectionError, PoolTimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        # SQLAlchemy found the connection dead, or the driver's own error type and code say
        # the database is out of reach (not every OperationalError does: see the dialects).
        return exc.connection_invalidated or dialects.is_unreachable(exc)
    return False


def init_app(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Response:
        return error_response(exc.status, exc.message, exc.errors, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = HTTP_MESSAGES.get(status, exc.name)
        if status == 413:
            message = (
                f"Request body too large (limit {current_app.config['MAX_CONTENT_LENGTH']} bytes)"
            )
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(status, message, headers=headers)

    @app.errorhandler(SQLAlchemyError)
    def _database_error(exc: SQLAlchemyError) -> Response:
        from analytics.dialects import is_lock_timeout

        _rollback()
        message = _view_failure_message("Database error")
        if is_lock_timeout(exc):
            current_app.logger.warning(
                "a write gave up waiting for a lock: %s", exc.__class__.__name__
            )
            return error_response(503, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if is_unreachable(exc):
            current_app.logger.warning(
                "database unavailable: %s", exc.__class__.__name__, exc_info=exc
            )
            return error_response(503, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        current_app.logger.error("database error", exc_info=exc)
        return error_response(500, message)

    @app.errorhandler(Exception)
    def _unexpected_error(exc: Exception) -> Response:
        _rollback()
        current_app.logger.error("unhandled error", exc_info=exc)
        return error_response(500, _view_failure_message(HTTP_MESSAGES[500]))
