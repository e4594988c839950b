"""The package installed from its wheel, far from the checkout: the sdist is built, the wheel
built from it and installed into a fresh virtualenv, and from another folder the CLI migrates a
new database and gunicorn serves an event back.

The wheel's dependencies come from the package index (pip's cache makes it quick)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, stop_process

pytestmark = pytest.mark.live

# What a build never reads: caches, databases and the virtualenvs of the checkout.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    "data",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    "*.db",
    "*.db-*",
)


def run(args: list, cwd: Path, env: dict | None = None, timeout: float = 300, **kwargs):
    """Run a command; its completed process, or a failure showing what it printed."""
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


class Installed:
    """A virtualenv holding the package installed from its wheel, and a working folder."""

    def __init__(self, base: Path):
        source, dist = base / "source", base / "dist"
        # A copy, so that building writes nothing into the checkout.
        shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
        # setuptools' own build hook, from the project's virtualenv: no build tool to install.
        build_sdist = "import sys, setuptools.build_meta as b; b.build_sdist(sys.argv[1])"
        run([sys.executable, "-c", build_sdist, dist], cwd=source)
        [self.sdist] = dist.glob("*.tar.gz")
        run([sys.executable, "-m", "pip", "wheel", self.sdist, "--no-deps", "-w", dist], cwd=base)
        [self.wheel] = dist.glob("*.whl")
        self.venv = base / "venv"
        run([sys.executable, "-m", "venv", self.venv], cwd=base)
        self.bin = self.venv / "bin"
        pip = [self.bin / "python", "-m", "pip", "--disable-pip-version-check", "--no-input"]
        run([*pip, "install", "--quiet", self.wheel], cwd=base)
        self.folder = base / "elsewhere"
        self.folder.mkdir()
        self.database = self.folder / "analytics.db"
        environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env = {
            **environ,
            "PATH": f"{self.bin}{os.pathsep}{environ.get('PATH', '')}",
            "DATABASE_URL": f"sqlite:///{self.database}",
        }

    def python(self, code: str) -> str:
        return run([self.bin / "python", "-c", code], cwd=self.folder, env=self.env).stdout

    def flask(self, *args: str, **kwargs) -> str:
        command = [self.bin / "flask", "--app", "analytics", *args]
        return run(command, cwd=self.folder, env=self.env, timeout=120, **kwargs).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("installed")
    assert not base.resolve().is_relative_to(ROOT)
    return Installed(base)


def test_the_installed_package_has_no_access_to_the_checkout(installed):
    seen = json.loads(
        installed.python(
            "import json, sys, analytics, analytics.migrations as m; "
            "print(json.dumps([analytics.__file__, str(m.LOCATION), sys.path]))"
        )
    )
    package, migrations, path = seen
    site = installed.venv.resolve()
    assert Path(package).resolve().is_relative_to(site)
    assert Path(migrations).resolve().is_relative_to(site)
    assert [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)] == []
    # The project's root modules stay behind: only the package travels.
    for module in ("wsgi", "config"):
        done = subprocess.run(
            [installed.bin / "python", "-c", f"import {module}"],
            cwd=installed.folder,
            env=installed.env,
            capture_output=True,
            text=True,
        )
        assert "ModuleNotFoundError" in done.stderr, module


def test_the_wheel_carries_every_file_of_the_package(installed):
    """Static files, the migrations and their template: whatever the package folder holds."""
    [package] = installed.venv.glob("lib/python*/site-packages/analytics")
    wanted = {
        path.relative_to(ROOT / "analytics").as_posix()
        for path in (ROOT / "analytics").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    there = {path.relative_to(package).as_posix() for path in package.rglob("*") if path.is_file()}
    assert sorted(wanted - there) == []


def test_the_cli_migrates_and_runs_every_command(installed, tmp_path):
    first = installed.flask("migrate")
    assert "from empty to " in first
    assert "is up to date" in installed.flask("migrate")
    assert installed.database.exists()
    assert not (installed.folder / "data").exists()  # DATABASE_URL was followed

    commands = installed.flask("--help")
    for name in ("migrate", "keys", "import", "purge", "rebuild-aggregates"):
        assert f"\n  {name} " in commands, name
    secret = installed.flask("keys", "create", "reader", "--scope", "read").splitlines()[-1]
    assert secret.startswith("ak_")
    assert "reader" in installed.flask("keys", "list")
    line = json.dumps({"event": "view", "user_id": "u", "timestamp": "2025-03-01T10:00:00Z"})
    imported = installed.flask("import", "-", "--format", "ndjson", input=line + "\n")
    assert "1 accepted" in imported
    assert "Rebuilt the aggregates" in installed.flask("rebuild-aggregates")
    assert "Would purge 0 events" in installed.flask("purge", "--dry-run")


def test_gunicorn_serves_the_installed_app(installed):
    installed.flask("migrate")
    port = free_port()
    env = {
        **installed.env,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_ACCESS_LOG": "off",
        "LOG_LEVEL": "warning",
    }
    command = [
        installed.bin / "gunicorn",
        "-c",
        "python:analytics.gunicorn_conf",
        "analytics:create_app()",
    ]
    log = installed.folder / "gunicorn.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(part) for part in command],
            cwd=installed.folder,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(server, port, log)
        event = {"event": "play", "user_id": "u1", "timestamp": "2025-02-01T12:00:00Z"}
        status, body = request(port, "POST", "/track", event)
        assert (status, body["status"]) == (200, "success"), body
        status, body = request(port, "GET", "/metrics?start_date=2025-02-01&end_date=2025-02-01")
        assert status == 200, body
        assert body["data"] == [{"date": "2025-02-01", "play": 1}]
        status, _ = request(port, "GET", "/dashboard")  # a page of the package's static files
        assert status == 200
    finally:
        stop_process(server)


def wait_for(server: subprocess.Popen, port: int, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail("gunicorn exited:\n" + log.read_text(errors="replace"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("gunicorn did not listen in time:\n" + log.read_text(errors="replace"))


def request(port: int, method: str, path: str, body: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(raw) if is_json else raw
