"""CORS for every origin on every response, errors included, and answers to preflights; the
ingest endpoints echo the request's Origin, with credentials allowed.

The rules are the contract's, unconditional and small, so they are written here rather than
configured in an extension that echoes only the headers a preflight happens to ask for.
"""

from __future__ import annotations

from flask import Flask, Response, request

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Content-Encoding, Authorization, X-Requested-With"
MAX_AGE_SECONDS = "86400"
# Ingest answers, preflights included, name the request's Origin instead of "*".
ECHO_ORIGIN_PATHS = ("/track", "/track/batch")
# Headers a browser script may read from an answer besides the basic ones: the limits and
# the reason for a refusal.
EXPOSE_HEADERS = (
    "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, WWW-Authenticate"
)


def init_app(app: Flask) -> None:
    @app.before_request
    def _preflight() -> Response | None:
        # Flask routes OPTIONS on every known path; unknown paths still get a JSON 404.
        if request.method == "OPTIONS" and request.url_rule is not None:
            response = app.response_class(status=204)
            del response.headers["Content-Type"]  # no body, so no type
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = MAX_AGE_SECONDS
            return response
        return None

    @app.after_request
    def _allow_origin(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and request.path in ECHO_ORIGIN_PATHS:
            # A beacon of a JSON Blob, or a fetch with credentials, is refused by browsers
            # under "*"; the service sets no cookies, so crediting the origin exposes nothing.
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.vary.add("Origin")
        else:
            response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response
