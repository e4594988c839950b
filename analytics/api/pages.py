"""The browser's pages beside the JSON API: GET /dashboard, GET /docs (the API reference) and
GET /analytics.js (the tracker). They are HTML and JavaScript, not JSON, and public: the
dashboard asks for a read key itself when the API needs one.

Their assets are files of this package (analytics/static, served at /static/...), so nothing
is loaded from another host; the Content-Security-Policy makes the browser hold to that.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, send_from_directory

bp = Blueprint("pages", __name__)

# Everything from this server only (the tracker's own page is another site's, so it is left out).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)


def _static_folder() -> str:
    folder = current_app.static_folder
    assert folder is not None  # the package's static folder, set by create_app
    return folder


def _page(path: str) -> Response:
    response = send_from_directory(_static_folder(), path, mimetype="text/html", max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/dashboard")
def dashboard() -> Response:
    return _page("dashboard/index.html")


@bp.get("/docs")
def docs() -> Response:
    return _page("docs/index.html")


@bp.get("/analytics.js")
def tracker() -> Response:
    # Cached for an hour: pages load it on every visit, and a new version may wait that long.
    response = send_from_directory(
        _static_folder(),
        "tracker/analytics.min.js",
        mimetype="text/javascript",
        max_age=3600,
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
