"""Rate limits with flask-limiter: per key (its ``--rate``), or per client address
(RATE_LIMIT_ANONYMOUS) for requests without a valid key; 429 "Rate limit exceeded" over the
limit, and ``RateLimit-*`` headers on every response a limit applies to.

One limit is shared by every endpoint a client calls (a batch is one request). Counts live in
Redis when RATE_LIMIT_STORAGE_URL names one, so they hold across processes and hosts; in memory
otherwise, where each process counts alone. Should Redis stop answering, each process counts in
memory until it is back, rather than refusing or failing requests.
"""
from __future__ import annotations

import logging
import math
import time

from flask import Flask, current_app, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded

from analytics.auth import current_access
from analytics.errors import error_response

EXTENSION_KEY = "analytics.limiter"
EXCEEDED = "Rate limit exceeded"
# A Redis that does not answer costs a request this long at most before the memory fallback.
REDIS_TIMEOUT_SECONDS = 0.5
log = logging.getLogger(__name__)


def _rate() -> str:
    """The limit of the current request: its key's, or the anonymous one ("" for none)."""
    access = current_access()
    if access.key is not None:
        return access.key.rate or ""
    return current_app.config["RATE_LIMIT_ANONYMOUS"] or ""


def _bucket() -> str:
    """Whose allowance the current request uses: its key's, or its client address's."""
    key = current_access().key
    if key is not None:
        # The digest rather than the row id: deployments sharing a Redis never share a count.
        return f"key:{key.secret_hash[:32]}"
    return f"addr:{request.remote_addr}"


def _exempt() -> bool:
    """Public paths (/health, /openapi.json), preflights and unknown paths are never limited."""
    return current_access().scope is None


def _too_many(_exc: RateLimitExceeded):
    return error_response(429, EXCEEDED)


def _add_headers(response):
    limiter: Limiter = current_app.extensions[EXTENSION_KEY]
    limit = limiter.current_limit
    if limit is None:
        return response
    try:
        reset_at, remaining = limit.window
    except Exception:  # noqa: BLE001 - the storage failed after counting: answer without them
        log.warning("rate limit storage unavailable for the RateLimit headers", exc_info=True)
        return response
    seconds = max(0, math.ceil(reset_at - time.time()))
    response.headers["RateLimit-Limit"] = str(limit.limit.amount)
    response.headers["RateLimit-Remaining"] = str(remaining)
    response.headers["RateLimit-Reset"] = str(seconds)
    if response.status_code == 429:
        response.headers["Retry-After"] = str(max(1, seconds))
    return response


def init_app(app: Flask) -> None:
    storage = app.config["RATE_LIMIT_STORAGE_URL"]
    options = {} if storage.startswith("memory") else {
        "socket_timeout": REDIS_TIMEOUT_SECONDS, "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}
    limiter = Limiter(
        key_func=_bucket,
        application_limits=[ApplicationLimit(limit_provider=_rate, key_function=_bucket)],
        storage_uri=storage,
        storage_options=options,
        strategy="fixed-window",
        # Our own headers: the RateLimit-* names, a reset in seconds, Retry-After on 429 only.
        headers_enabled=False,
        key_prefix=app.config.get("RATE_LIMIT_KEY_PREFIX", "analytics"),
        in_memory_fallback_enabled=True,
    )
    limiter.request_filter(_exempt)
    limiter.init_app(app)
    # It logs every refused request at INFO: a flood would become a flood of log lines.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)
    app.extensions[EXTENSION_KEY] = limiter
    app.register_error_handler(RateLimitExceeded, _too_many)
    app.after_request(_add_headers)
