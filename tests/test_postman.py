"""analytics-api.postman_collection.json: a Postman v2.1 collection whose every request checks its
answer, run with newman (installed by ``npm ci``) against a live gunicorn."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import date

import pytest

from tests.helpers import ROOT, create_key_with_flask, require_tool

COLLECTION = ROOT / "analytics-api.postman_collection.json"
NEWMAN = ROOT / "node_modules" / ".bin" / "newman"


def requests(items: list[dict]) -> list[dict]:
    """The collection's requests, folders flattened, in run order."""
    found = []
    for item in items:
        found.extend(requests(item["item"]) if "item" in item else [item])
    return found


def is_calendar_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def test_collection_is_postman_v21_with_a_checked_request_per_case():
    collection = json.loads(COLLECTION.read_text())
    assert collection["info"]["schema"] == (
        "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
    )
    variables = {variable["key"]: variable["value"] for variable in collection["variable"]}
    assert "baseUrl" in variables
    # The key is sent as a Bearer token by every request, and left empty for an open server.
    assert variables["apiKey"] == ""
    assert collection["auth"] == {
        "type": "bearer",
        "bearer": [{"key": "token", "value": "{{apiKey}}", "type": "string"}],
    }
    items = requests(collection["item"])
    assert {
        (item["request"]["method"], "/".join(item["request"]["url"]["path"])) for item in items
    } == {
        ("POST", "track"),
        ("POST", "track/batch"),
        ("GET", "metrics"),
        ("GET", "sessions"),
        ("GET", "active-users"),
        ("GET", "events"),
        ("GET", "users/{{guestPath}}/events"),
        ("DELETE", "users/{{guestPath}}"),
    }
    names = [item["name"] for item in items]
    assert len(names) == len(set(names)) == 18
    # event_id and batches: the retry comes right after the request it repeats.
    first = names.index("Track with event_id")
    assert names[first + 1] == "Track same event_id again (duplicate)"
    assert "Batch with a bad and a duplicate item" in names
    for item in items:
        request = item["request"]
        assert request["url"]["raw"].startswith("{{baseUrl}}/"), item["name"]
        tests = [event for event in item["event"] if event["listen"] == "test"]
        assert tests and "pm.test(" in "\n".join(tests[0]["script"]["exec"]), item["name"]
        assert "pm.response.to.have.status(" in "\n".join(tests[0]["script"]["exec"])
        for query in request["url"].get("query", []):
            # Dates come from the pre-request scripts; only the invalid one is written out.
            assert not is_calendar_date(query["value"]), item["name"]
        if "body" in request:
            assert request["body"]["mode"] == "raw"
            assert request["body"]["options"]["raw"]["language"] == "json"
            # Valid JSON once Postman has put a variable's text in place of each {{name}}.
            json.loads(re.sub(r"\{\{\w+\}\}", "text", request["body"]["raw"]))


def run_newman(base_url: str, report, *env_vars: str) -> subprocess.CompletedProcess:
    newman = require_tool("newman", path=str(NEWMAN), install="npm ci")
    options = [part for env_var in env_vars for part in ("--env-var", env_var)]
    return subprocess.run(
        [
            newman,
            "run",
            str(COLLECTION),
            "--env-var",
            f"baseUrl={base_url}",
            *options,
            "--color",
            "off",
            "--reporters",
            "cli,json",
            "--reporter-json-export",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.live
@pytest.mark.e2e
def test_newman_runs_the_collection_green(live_server, tmp_path):
    server = live_server(workers=1)
    report = tmp_path / "newman.json"
    done = run_newman(server.url, report)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_every_request_passed(report)


@pytest.mark.live
@pytest.mark.e2e
def test_newman_runs_the_collection_green_with_a_key(live_server, database_url, tmp_path):
    server = live_server(workers=1, AUTH_MODE="all")
    secret = create_key_with_flask(
        database_url, "postman", "--scope", "ingest", "--scope", "read", "--scope", "admin"
    )

    # Without the key every request of the collection is refused...
    refused = tmp_path / "refused.json"
    done = run_newman(server.url, refused)
    assert done.returncode != 0
    executions = json.loads(refused.read_text())["run"]["executions"]
    assert len(executions) == 18
    assert {execution["response"]["code"] for execution in executions} == {401}
    # ...and with it every one is answered as on an open server.
    report = tmp_path / "newman.json"
    done = run_newman(server.url, report, f"apiKey={secret}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_every_request_passed(report)


def assert_every_request_passed(report) -> None:
    run = json.loads(report.read_text())["run"]
    assert run["failures"] == []
    names = [item["name"] for item in requests(json.loads(COLLECTION.read_text())["item"])]
    executed = [execution["item"]["name"] for execution in run["executions"]]
    assert executed == names
    for execution in run["executions"]:
        assertions = execution.get("assertions", [])
        assert assertions, f"{execution['item']['name']} checked nothing"
        assert all("error" not in assertion for assertion in assertions)
