"""GET /openapi.json: a valid OpenAPI 3 document that matches what the endpoints accept."""

from __future__ import annotations

import re

from openapi_spec_validator import validate


def test_document_is_valid_openapi(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.")


def test_track_request_schema_comes_from_the_validating_schema(client):
    document = client.get("/openapi.json").get_json()
    schema = document["components"]["schemas"]["TrackEvent"]
    assert set(schema["required"]) == {"event", "user_id"}
    assert schema["properties"]["event"]["maxLength"] == 255
    assert schema["properties"]["timestamp"]["format"] == "date-time"
    track = document["paths"]["/track"]["post"]
    assert {"200", "400", "413", "415", "503"} <= set(track["responses"])
    assert "text/plain" in track["requestBody"]["content"]


def test_every_route_is_documented(app, client):
    document = client.get("/openapi.json").get_json()
    # Flask writes a path parameter <name>, OpenAPI {name}.
    routes = {
        re.sub(r"<(\w+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    assert routes <= set(document["paths"])


def test_the_document_declares_the_keys_and_their_refusals(make_app):
    document = make_app(AUTH_MODE="reads").test_client().get("/openapi.json").get_json()
    validate(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {**schemes["bearerKey"], "type": "http", "scheme": "bearer"}
    assert schemes["queryKey"]["in"] == "query" and schemes["queryKey"]["name"] == "key"

    metrics = document["paths"]["/metrics"]["get"]
    assert metrics["security"] == [{"bearerKey": []}]  # reads need a key in this mode
    track = document["paths"]["/track"]["post"]
    assert track["security"] == [{"bearerKey": []}, {"queryKey": []}, {}]
    for operation in (metrics, track):
        assert {"401", "403", "429"} <= set(operation["responses"])
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
            operation["responses"]["429"]["headers"]
        )
    for path in ("/health", "/openapi.json"):
        operation = document["paths"][path]["get"]
        assert operation["security"] == []
        assert not {"401", "403", "429"} & set(operation["responses"])


def test_in_all_mode_every_keyed_operation_requires_a_key(make_app):
    document = make_app(AUTH_MODE="all").test_client().get("/openapi.json").get_json()
    assert document["paths"]["/track"]["post"]["security"] == [{"bearerKey": []}, {"queryKey": []}]


def test_the_export_and_the_users_paths_are_admin_or_read(make_app):
    document = make_app(AUTH_MODE="reads").test_client().get("/openapi.json").get_json()
    validate(document)
    events = document["paths"]["/events"]["get"]
    assert {parameter["name"] for parameter in events["parameters"]} == {
        "start_date",
        "end_date",
        "tz",
        "event",
        "user_id",
        "format",
    }
    assert set(events["responses"]["200"]["content"]) == {"application/x-ndjson", "text/csv"}
    assert events["responses"]["403"]["description"].startswith('"This API key does not allow read')
    erase = document["paths"]["/users/{user_id}"]["delete"]
    assert erase["responses"]["403"]["description"].startswith('"This API key does not allow admin')
    assert erase["security"] == [{"bearerKey": []}]
    assert document["paths"]["/users/{user_id}/events"]["get"]["parameters"][0]["in"] == "path"
