"""The deployment kit in deploy/: its settings load, and nginx with TLS in front of gunicorn on
PostgreSQL serves the whole curl tour over HTTPS, redirects plain HTTP, caps bodies like the app,
and lets the app see the client's scheme and host through ProxyFix."""

from __future__ import annotations

import configparser
import http.client
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from analytics.config import load_config
from analytics.models import Event
from tests import tour
from tests.helpers import (
    ROOT,
    TRUNCATED_WARNING,
    count_events,
    create_key_with_flask,
    free_port,
    require_tool,
    stop_process,
)

DEPLOY = ROOT / "deploy"
SITE = DEPLOY / "nginx" / "analytics.conf"
ENV_FILE = "/etc/analytics/analytics.env"


def env_example() -> dict[str, str]:
    """deploy/analytics.env.example as systemd's EnvironmentFile= reads it."""
    values = {}
    for line in (DEPLOY / "analytics.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text())
    return parser


def nginx_size(text: str) -> int:
    number, unit_ = re.fullmatch(r"(\d+)([kKmMgG]?)", text).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit_.lower()]


# --- The files themselves -------------------------------------------------------------------


def test_environment_example_is_a_valid_production_configuration():
    values = env_example()
    settings = load_config(values)  # raises on any malformed or missing setting
    assert settings.DATABASE_URL.startswith("postgresql+psycopg://")
    assert settings.TRUSTED_PROXIES == 1
    assert settings.AUTH_MODE == "reads"
    assert settings.RATE_LIMIT_ANONYMOUS == "120/minute"
    assert settings.RATE_LIMIT_STORAGE_URL.startswith("redis://")
    # Every name in the example is a setting the app or gunicorn reads.
    package = ROOT / "analytics"
    sources = (package / "config.py").read_text() + (package / "gunicorn_conf.py").read_text()
    assert [name for name in values if f'"{name}"' not in sources] == []


def test_nginx_limits_floods_but_never_health_the_document_or_preflights():
    site = SITE.read_text()
    [zone] = re.findall(
        r"^limit_req_zone \$(\w+) zone=(\w+):\w+ rate=(\d+)r/s;", site, re.MULTILINE
    )
    variable, name, rate = zone
    assert re.search(rf"^\s*limit_req zone={name} burst=\d+ nodelay;", site, re.MULTILINE)
    assert "limit_req_status 429;" in site
    # The map gives the exempt requests an empty key, which nginx does not count.
    [body] = re.findall(rf'map "\$request_method \$uri" \${variable} {{(.*?)}}', site, re.S)
    assert '"~^OPTIONS "' in body and "health|openapi" in body
    assert '{"status":"error","message":"Rate limit exceeded"}' in site
    # Generous beside the app's own anonymous limit: nginx only stops floods.
    assert int(rate) * 60 > 10 * int(load_config(env_example()).RATE_LIMIT_ANONYMOUS.split("/")[0])


def test_nginx_body_limit_is_the_apps_limit():
    [limit] = re.findall(r"^\s*client_max_body_size\s+(\S+);", SITE.read_text(), re.MULTILINE)
    assert nginx_size(limit) == load_config(env_example()).MAX_CONTENT_LENGTH
    assert nginx_size(limit) == load_config({}).MAX_CONTENT_LENGTH  # the app's default
    assert f"(limit {nginx_size(limit)} bytes)" in SITE.read_text()


def test_nginx_waits_for_an_erasure_longer_than_for_other_answers():
    text = SITE.read_text()
    users = re.search(r"location /users/ \{(.*?)\}", text, re.S).group(1)
    assert "proxy_pass http://analytics_app;" in users
    timeouts = [int(value) for value in re.findall(r"proxy_read_timeout (\d+)s;", text)]
    assert int(re.search(r"proxy_read_timeout (\d+)s;", users).group(1)) == max(timeouts) >= 600


def test_units_run_the_documented_commands_with_the_environment_file():
    app_unit = unit("analytics.service")["Service"]
    purge_unit = unit("analytics-purge.service")["Service"]
    for service in (app_unit, purge_unit):
        assert service["EnvironmentFile"] == ENV_FILE
        assert service["User"] == "analytics"
        assert Path(service["ExecStart"].split()[0]).parent.parent.parent == Path(
            service["WorkingDirectory"]
        )  # the virtualenv inside the checkout
    assert shlex.split(app_unit["ExecStart"])[1:] == ["wsgi:app"]
    assert shlex.split(purge_unit["ExecStart"])[1:] == ["--app", "wsgi", "purge"]
    assert purge_unit["Type"] == "oneshot"

    timer = unit("analytics-purge.timer")
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"

    [cron] = [
        line
        for line in (DEPLOY / "analytics.cron").read_text().splitlines()
        if line and not line.startswith("#") and "=" not in line.split()[0]
    ]
    fields = cron.split(None, 6)
    assert fields[5] == purge_unit["User"]
    assert f". {ENV_FILE}" in fields[6]
    assert f"cd {purge_unit['WorkingDirectory']}" in fields[6]
    assert ".venv/bin/flask --app wsgi purge" in fields[6]


@pytest.mark.parametrize(
    "trusted, expected",
    [
        (0, ["http://localhost/", "127.0.0.1"]),
        (1, ["https://analytics.example.com/", "203.0.113.9"]),
    ],
)
def test_app_trusts_forwarded_headers_only_when_told(app_factory, trusted, expected):
    from flask import request as seen

    app = app_factory("sqlite://", TRUSTED_PROXIES=trusted)
    app.add_url_rule("/seen", view_func=lambda: [seen.url_root, seen.remote_addr])
    response = app.test_client().get(
        "/seen",
        headers={
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "analytics.example.com",
            "X-Forwarded-Port": "443",
            "X-Forwarded-For": "203.0.113.9",
        },
    )
    assert response.get_json() == expected


# --- nginx in front of gunicorn --------------------------------------------------------------


class Nginx:
    """nginx in the foreground, serving deploy/nginx/analytics.conf on loopback ports."""

    def __init__(
        self,
        directory: Path,
        upstream_port: int,
        certificate: Path,
        key: Path,
        binary: str,
        read_timeout: str | None = None,
    ):
        self.directory = directory
        self.binary = binary
        self.http_port, self.https_port = free_port(), free_port()
        self.https_url = f"https://127.0.0.1:{self.https_port}"
        self.certificate = certificate
        site = render_site(
            SITE.read_text(),
            http_port=self.http_port,
            https_port=self.https_port,
            upstream_port=upstream_port,
            certificate=certificate,
            key=key,
        )
        if read_timeout is not None:  # an upstream that never answers, tested in less time
            site = replace_once(
                site, "proxy_read_timeout 35s;", f"proxy_read_timeout {read_timeout};"
            )
        (directory / "analytics.conf").write_text(site)
        self.config = directory / "nginx.conf"
        self.config.write_text(main_config(directory))
        self.process: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        return [
            self.binary,
            "-p",
            str(self.directory),
            "-c",
            str(self.config),
            "-e",
            str(self.directory / "error.log"),
            *args,
        ]

    def start(self, timeout: float = 20) -> Nginx:
        checked = subprocess.run(self.command("-t"), capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.error_log()
            try:
                for port in (self.http_port, self.https_port):
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not start listening in time:\n" + self.error_log())

    def stop(self) -> None:
        stop_process(self.process)

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""

    def https(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.certificate))
        return http.client.HTTPSConnection(
            "127.0.0.1", self.https_port, context=context, timeout=30
        )

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)


def replace_once(text: str, old: str, new: str) -> str:
    # The deploy file must still contain what the test adapts: if it changes, this fails
    # instead of silently testing some other configuration.
    assert text.count(old) == 1, f"deploy/nginx/analytics.conf no longer has {old!r} once"
    return text.replace(old, new)


def render_site(
    text: str, *, http_port: int, https_port: int, upstream_port: int, certificate: Path, key: Path
) -> str:
    """The deployed site, moved to loopback ports and a test certificate; nothing else changes."""
    text = replace_once(text, "    listen 80;\n", f"    listen 127.0.0.1:{http_port};\n")
    text = replace_once(text, "    listen [::]:80;\n", "")
    text = replace_once(text, "    listen 443 ssl;\n", f"    listen 127.0.0.1:{https_port} ssl;\n")
    text = replace_once(text, "    listen [::]:443 ssl;\n", "")
    text = replace_once(text, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
    text = replace_once(
        text, "/etc/letsencrypt/live/analytics.example.com/fullchain.pem", str(certificate)
    )
    text = replace_once(text, "/etc/letsencrypt/live/analytics.example.com/privkey.pem", str(key))
    return text


def main_config(directory: Path) -> str:
    """What /etc/nginx/nginx.conf provides around a site, with every path inside ``directory``."""
    temp = {name: directory / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    # As root, nginx's workers would run as nobody, who cannot enter pytest's private tmp.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {directory / 'nginx.pid'};
error_log {directory / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
    access_log {directory / 'access.log'};
    client_body_temp_path {temp['client_body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    include {directory / 'analytics.conf'};
}}
"""


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    openssl = require_tool("openssl", install="apt-get install openssl")
    certificate, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return certificate, key


@pytest.fixture
def gunicorn(live_server):
    """gunicorn on the test database with the access and proxy settings of
    deploy/analytics.env.example. Its rate-limit counts stay in memory: in the machine's Redis
    they would be shared with every other test run."""
    example = env_example()
    return live_server(
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        **{
            name: example[name] for name in ("TRUSTED_PROXIES", "AUTH_MODE", "RATE_LIMIT_ANONYMOUS")
        },
    )


@pytest.fixture
def nginx(gunicorn, tmp_path):
    binary = require_tool("nginx", install="apt-get install nginx")
    certificate, key = self_signed_certificate(tmp_path)
    server = Nginx(tmp_path, gunicorn.port, certificate, key, binary).start()
    yield server
    server.stop()


def behind_nginx(test):
    """Mark a test of nginx in front of gunicorn: end-to-end, live, and on PostgreSQL only (what
    the deployment runs on) instead of conftest's two backends."""
    test = pytest.mark.parametrize("backend", ["postgresql"])(test)
    return pytest.mark.e2e(pytest.mark.live(test))


def request(
    connection, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on its own connection, closed afterwards."""
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


@behind_nginx
def test_curl_tour_over_https(nginx, database_url):
    require_tool("curl", install="apt-get install curl")
    today = tour.utc_today()
    secret = create_key_with_flask(
        database_url, "tour", "--scope", "ingest", "--scope", "read", "--scope", "admin"
    )
    done = tour.run(
        nginx.https_url,
        user_id="tls-user",
        env={"CURL_CA_BUNDLE": str(nginx.certificate), "ANALYTICS_KEY": secret},
    )
    assert done.returncode == 0, done.stderr
    tour.check(done.stdout, nginx.https_url, "tls-user", today)


@behind_nginx
def test_plain_http_is_redirected_to_https(nginx, engine):
    response, _ = request(nginx.http(), "GET", "/metrics?start_date=2025-01-01&end_date=2025-01-31")
    assert response.status in (301, 308)
    assert response.headers["Location"] == (
        "https://127.0.0.1/metrics?start_date=2025-01-01&end_date=2025-01-31"
    )

    # A POST is redirected too (308 keeps it a POST), and nothing reaches the app over HTTP.
    response, _ = request(
        nginx.http(),
        "POST",
        "/track",
        json.dumps({"event": "play", "user_id": "u"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert response.status == 308
    assert response.headers["Location"] == "https://127.0.0.1/track"
    assert count_events(engine) == 0


def seen_by_the_app(gunicorn, request_id: str) -> dict:
    """The JSON access line of a request: the scheme and host the app saw."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in gunicorn.output().splitlines():
            if line.startswith("{") and json.loads(line).get("request_id") == request_id:
                return json.loads(line)
        time.sleep(0.1)
    raise AssertionError(f"no access line for {request_id}:\n{gunicorn.output()}")


@behind_nginx
def test_app_sees_the_clients_scheme_and_host(nginx, gunicorn):
    # A client's own X-Forwarded-* headers are replaced by nginx's, not believed.
    response, body = request(
        nginx.https(),
        "GET",
        "/openapi.json",
        headers={
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "spoofed.example",
            "X-Forwarded-Port": "1",
            "X-Request-Id": "through-nginx",
        },
    )
    assert response.status == 200
    seen = seen_by_the_app(gunicorn, response.headers["X-Request-Id"])
    assert f"{seen['scheme']}://{seen['host']}" == nginx.https_url
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")

    # Straight to gunicorn, without nginx's headers, the app sees plain HTTP.
    direct = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=30)
    response, body = request(
        direct, "GET", "/openapi.json", headers={"X-Request-Id": "straight-to-gunicorn"}
    )
    seen = seen_by_the_app(gunicorn, "straight-to-gunicorn")
    assert f"{seen['scheme']}://{seen['host']}" == gunicorn.url


@behind_nginx
def test_body_limit_answers_like_the_app(nginx, gunicorn, engine):
    limit = load_config({}).MAX_CONTENT_LENGTH
    prefix = b'{"event": "upload", "user_id": "big", "metadata": {"blob": "'
    suffix = b'"}}'

    def body_of(size: int) -> bytes:
        return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix

    headers = {"Content-Type": "application/json"}
    through_nginx, nginx_body = request(
        nginx.https(), "POST", "/track", body_of(limit + 1), headers
    )
    direct = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=30)
    from_app, app_body = request(direct, "POST", "/track", body_of(limit + 1), headers)
    assert through_nginx.status == from_app.status == 413
    assert through_nginx.headers["Content-Type"].startswith("application/json")
    assert through_nginx.headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(nginx_body) == json.loads(app_body)

    # Exactly at the limit, the body goes through nginx (buffered to disk) to the app.
    response, body = request(nginx.https(), "POST", "/track", body_of(limit), headers)
    assert response.status == 200, body
    assert json.loads(body)["warnings"] == [TRUNCATED_WARNING]
    with Session(engine) as session:
        assert session.scalar(select(Event.user_id)) == "big"


METRICS = "/metrics?start_date=2025-01-01&end_date=2025-01-31"


@behind_nginx
def test_keyed_read_through_nginx(nginx, database_url):
    response, body = request(nginx.https(), "GET", METRICS)
    assert response.status == 401
    assert json.loads(body) == {"status": "error", "message": "API key required"}
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Access-Control-Allow-Origin"] == "*"

    secret = create_key_with_flask(database_url, "reader", "--scope", "read")
    response, body = request(
        nginx.https(), "GET", METRICS, headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status == 200, body
    assert json.loads(body) == {"status": "success", "data": []}


# Ids with every character a path treats specially: nginx passes the request target on as the
# client sent it (proxy_pass without a URI), and the app routes /users/ paths on it undecoded.
ODD_USER_IDS = ['a/b c?d#e%f "é" 漢', "/leading", "a//b", "..", "trailing/", "+&=;"]


@behind_nginx
def test_percent_encoded_user_ids_through_nginx(nginx, database_url):
    secret = create_key_with_flask(database_url, "dpo", "--scope", "admin")
    admin = {"Authorization": f"Bearer {secret}"}
    for user_id in [*ODD_USER_IDS, "a", "a/b"]:
        response, body = request(
            nginx.https(),
            "POST",
            "/track",
            json.dumps({"event": "play", "user_id": user_id}).encode(),
            {"Content-Type": "application/json"},
        )
        assert response.status == 200, body

    for user_id in ODD_USER_IDS:
        path = "/users/" + quote(user_id, safe="")
        response, body = request(nginx.https(), "GET", path + "/events", headers=admin)
        assert response.status == 200, (user_id, body)
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert [json.loads(line)["user_id"] for line in body.decode().splitlines()] == [user_id]
        response, body = request(nginx.https(), "DELETE", path, headers=admin)
        assert response.status == 200, (user_id, body)
        assert json.loads(body) == {"status": "success", "deleted": 1}
    # Only those: the users whose ids the others would be if a %2F were decoded early remain.
    response, body = request(nginx.https(), "GET", "/users/a%2Fb/events", headers=admin)
    assert [json.loads(line)["user_id"] for line in body.decode().splitlines()] == ["a/b"]


@behind_nginx
def test_the_apps_rate_limits_through_nginx(nginx, database_url):
    secret = create_key_with_flask(database_url, "metered", "--scope", "read", "--rate", "2/minute")
    headers = {"Authorization": f"Bearer {secret}"}
    for _ in range(2):
        response, _body = request(nginx.https(), "GET", METRICS, headers=headers)
        assert response.status == 200
    response, body = request(nginx.https(), "GET", METRICS, headers=headers)
    assert response.status == 429
    assert json.loads(body) == {"status": "error", "message": "Rate limit exceeded"}
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert (response.headers["RateLimit-Limit"], response.headers["RateLimit-Remaining"]) == (
        "2",
        "0",
    )

    # Without a key the client is counted by the address nginx saw: a forged
    # X-Forwarded-For neither moves it to another count nor is believed.
    remaining = []
    for forged in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        response, _body = request(
            nginx.https(),
            "POST",
            "/track",
            json.dumps({"event": "e", "user_id": "u"}).encode(),
            {"Content-Type": "application/json", "X-Forwarded-For": forged},
        )
        assert response.status == 200
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [remaining[0], remaining[0] - 1, remaining[0] - 2]


def kept_alive_statuses(nginx, path: str, count: int, stop_at: int | None = None):
    """Send ``count`` GETs of ``path`` one after the other on one kept-alive connection, far
    faster than the zone's rate; their statuses, and the last response and body."""
    connection = nginx.https()
    statuses = []
    try:
        for _ in range(count):
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            statuses.append(response.status)
            if response.status == stop_at:
                break
    finally:
        connection.close()
    return statuses, response, body


@behind_nginx
def test_nginx_refuses_a_flood_with_the_apis_429(nginx):
    # Health checks and the document are not counted: many more than the burst all pass.
    for path in ("/health", "/openapi.json"):
        statuses, _response, _body = kept_alive_statuses(nginx, path, 400)
        assert set(statuses) == {200}

    statuses, response, body = kept_alive_statuses(nginx, "/no-such-path", 2000, stop_at=429)
    assert statuses[-1] == 429, statuses[-5:]
    assert set(statuses[:-1]) == {404}  # the burst went through to the app
    assert len(statuses) > 100
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"status": "error", "message": "Rate limit exceeded"}
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# --- errors nginx produces, and slow clients ---------------------------------------------------


def assert_nginx_json_error(status: int, headers, body: bytes, expected: int) -> None:
    assert status == expected, body[:300]
    assert headers["Content-Type"].startswith("application/json"), body[:300]
    answer = json.loads(body)
    assert answer["status"] == "error" and answer["message"]
    assert headers["Access-Control-Allow-Origin"] == "*"


def raw_exchange(nginx, data: bytes) -> tuple[int, dict, bytes]:
    """Raw bytes over TLS to nginx; the status, headers and body of the answer."""
    context = ssl.create_default_context(cafile=str(nginx.certificate))
    with (
        socket.create_connection(("127.0.0.1", nginx.https_port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, _, rest = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length and len(rest) >= int(length.group(1)):
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


@behind_nginx
def test_errors_nginx_produces_are_json(nginx, tmp_path):
    # 400: a request nginx cannot read (HTTP/1.1 without Host).
    status, headers, body = raw_exchange(nginx, b"GET /health HTTP/1.1\r\n\r\n")
    assert_nginx_json_error(status, headers, body, 400)
    # 414: a request line longer than nginx's header buffers.
    response, body = request(nginx.https(), "GET", "/metrics?x=" + "a" * 20000)
    assert_nginx_json_error(response.status, response.headers, body, 414)
    # 431: a header larger than nginx's header buffers.
    response, body = request(nginx.https(), "GET", "/health", headers={"X-Big": "b" * 20000})
    assert_nginx_json_error(response.status, response.headers, body, 431)

    # 502: nothing listens upstream. 504: the upstream accepts and never answers.
    binary = require_tool("nginx", install="apt-get install nginx")
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        for expected, upstream in ((502, free_port()), (504, silent.getsockname()[1])):
            directory = tmp_path / f"upstream-{expected}"
            directory.mkdir()
            broken = Nginx(
                directory,
                upstream,
                nginx.certificate,
                nginx.certificate.with_name("key.pem"),
                binary,
                read_timeout="1s",
            )
            broken.start()
            try:
                response, body = request(broken.https(), "GET", "/health")
                assert_nginx_json_error(response.status, response.headers, body, expected)
                assert int(response.headers["Retry-After"]) > 0
            finally:
                broken.stop()
    finally:
        silent.close()


class SlowClient:
    """A client that sends a POST's headers and one byte of its body, then holds the
    connection, as a client on a bad network (or an attacker) would."""

    def __init__(self, nginx):
        context = ssl.create_default_context(cafile=str(nginx.certificate))
        raw = socket.create_connection(("127.0.0.1", nginx.https_port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.sock.sendall(
            b"POST /track HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@behind_nginx
def test_a_hundred_slow_clients_do_not_stop_a_normal_one(nginx, engine):
    slow = [SlowClient(nginx) for _ in range(100)]
    try:
        time.sleep(0.5)  # nginx has read what each of them sent
        # The normal client comes from another address of the loopback network.
        context = ssl.create_default_context(cafile=str(nginx.certificate))
        for n in range(20):
            connection = http.client.HTTPSConnection(
                "127.0.0.1",
                nginx.https_port,
                context=context,
                timeout=10,
                source_address=("127.0.0.2", 0),
            )
            path, body = (
                ("/health", None)
                if n % 2
                else ("/track", json.dumps({"event": "play", "user_id": f"normal{n}"}).encode())
            )
            response, answer = request(
                connection,
                "GET" if body is None else "POST",
                path,
                body,
                {"Content-Type": "application/json"},
            )
            assert response.status == 200, answer
        # The slow clients' address holds at most limit_conn connections: the rest were
        # refused at once, with the API's JSON 503.
        refused = 0
        for client in slow:
            client.sock.settimeout(0.2)
            try:
                answer = client.sock.recv(65536)
            except (TimeoutError, ssl.SSLError, OSError):
                continue
            if answer.startswith(b"HTTP/1.1 503"):
                assert b'"status":"error"' in answer and b"application/json" in answer
                refused += 1
        assert refused >= 50
    finally:
        for client in slow:
            client.close()
    assert count_events(engine) == 10
