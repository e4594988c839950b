"""docs/api.md is generated from the OpenAPI document (tools/api_reference.py), the document
states the limits the app is configured with, and its worked examples are real answers."""

from __future__ import annotations

import importlib.util
import json

from analytics.api.openapi import BATCH_ANSWER, BATCH_EXAMPLE
from tests.helpers import ROOT

REGENERATE = ".venv/bin/python tools/api_reference.py > docs/api.md"


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "api_reference", ROOT / "tools" / "api_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_api_md_is_what_the_document_renders_to():
    tool = load_tool()
    assert tool.COMMAND == REGENERATE
    expected = tool.render(tool.served_document())
    written = (ROOT / "docs" / "api.md").read_text()
    assert written == expected, f"docs/api.md is out of date; regenerate it: {REGENERATE}"


def test_the_document_states_the_configured_limits(make_app):
    app = make_app(MAX_CONTENT_LENGTH=2048, METADATA_MAX_BYTES=100, BATCH_MAX_EVENTS=10)
    document = app.test_client().get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    assert schemas["TrackBatch"]["properties"]["events"]["maxItems"] == 10
    assert "Over 100 bytes" in schemas["TrackEvent"]["properties"]["metadata"]["description"]
    assert "at most 2048 bytes" in document["info"]["description"]
    batch = document["paths"]["/track/batch"]["post"]
    assert "at most 10 events" in batch["description"]
    assert "(limit 10)" in batch["responses"]["413"]["description"]
    text = json.dumps(document)
    assert "4096" not in text and "1048576" not in text and "(limit 1000)" not in text


def test_the_default_limits_are_in_the_reference():
    reference = (ROOT / "docs" / "api.md").read_text()
    for default in ("1048576 bytes", "4096 bytes", "at most 1000 events"):
        assert default in reference


def examples(media: dict) -> dict:
    return {name: example["value"] for name, example in media["examples"].items()}


def test_the_track_examples_get_the_documented_answers(client):
    operation = client.get("/openapi.json").get_json()["paths"]["/track"]["post"]
    sent = examples(operation["requestBody"]["content"]["application/json"])
    answers = examples(operation["responses"]["200"]["content"]["application/json"])
    assert set(sent) == set(answers)
    for name, body in sent.items():
        response = client.post("/track", json=body)
        if name == "retry":  # the answer documented is the second one's
            response = client.post("/track", json=body)
        assert response.get_json() == answers[name], name


def test_the_batch_examples_get_the_documented_answers(client):
    operation = client.get("/openapi.json").get_json()["paths"]["/track/batch"]["post"]
    content = operation["requestBody"]["content"]
    answers = examples(operation["responses"]["200"]["content"]["application/json"])
    assert content["application/json"]["example"] == BATCH_EXAMPLE
    assert client.post("/track/batch", json=BATCH_EXAMPLE).get_json() == answers["json"]
    assert answers["json"] == BATCH_ANSWER
    response = client.post(
        "/track/batch",
        data=content["application/x-ndjson"]["example"],
        content_type="application/x-ndjson",
    )
    assert response.get_json() == answers["ndjson"]
