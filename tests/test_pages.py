"""The browser's pages as files: served, public, self-contained, small, and in the package.
What they do in a browser is tested in test_dashboard_browser.py and test_tracker_browser.py."""

from __future__ import annotations

import configparser
import fnmatch
import gzip
import re

import pytest

from tests.helpers import ROOT, assert_error

STATIC = ROOT / "analytics" / "static"
PAGES = {"/dashboard": "text/html", "/docs": "text/html", "/analytics.js": "text/javascript"}


def get(client, path, **kwargs):
    with client.get(path, **kwargs) as response:
        response.get_data()
        return response


@pytest.mark.parametrize("path, mimetype", PAGES.items())
def test_pages_are_public_and_not_limited(make_app, path, mimetype):
    client = make_app(AUTH_MODE="all", RATE_LIMIT_ANONYMOUS="1/minute").test_client()
    for _ in range(3):
        response = get(client, path)
        assert response.status_code == 200
        assert response.mimetype == mimetype
        assert "RateLimit-Limit" not in response.headers


@pytest.mark.parametrize("path", ["/dashboard", "/docs"])
def test_pages_load_only_their_own_files(make_app, path):
    client = make_app(AUTH_MODE="all").test_client()
    page = get(client, path)
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        assert "//" not in asset, asset  # no other host, no scheme-relative URL
        response = get(client, "/" + asset)  # relative to /dashboard or /docs
        assert response.status_code == 200, asset
        assert len(response.data) > 0


def test_static_files_outside_the_folder_are_refused(client):
    assert get(client, "/static/../auth.py").status_code == 404
    assert_error(get(client, "/static/nothing-here.js"), 404, "Not found")


def test_the_tracker_is_minified_and_under_3_kb_gzipped(client):
    body = get(client, "/analytics.js").data
    source = (STATIC / "tracker" / "analytics.js").read_bytes()
    assert len(body) < len(source) / 2  # minified, not the source
    assert len(gzip.compress(body, 9)) < 3 * 1024
    assert b"sendBeacon" in body and b"/track/batch" in body


@pytest.mark.parametrize(
    "library, licence", [("chart.js", "LICENSE.md"), ("swagger-ui", "LICENSE")]
)
def test_each_library_ships_with_its_licence(library, licence):
    folder = STATIC / "vendor" / library
    assert len((folder / licence).read_text()) > 500
    assert (folder / "VERSION").read_text().strip()


def test_package_data_carries_every_static_file():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config["options.package_data"]["analytics"].split()
    files = [p.relative_to(ROOT / "analytics").as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert len(files) > 5
    missed = [
        f
        for f in files
        if not any(
            fnmatch.fnmatchcase(f, pat) and f.count("/") == pat.count("/") for pat in patterns
        )
    ]
    assert missed == []
