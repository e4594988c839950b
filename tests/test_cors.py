"""CORS on the ingest endpoints: the request's Origin echoed, so that credentialed browser
requests (navigator.sendBeacon) are accepted; every other endpoint keeps "*"."""

from __future__ import annotations

import pytest

ORIGIN = "https://shop.example.com"
EVENT = {"event": "play", "user_id": "u1"}


@pytest.mark.parametrize("path, body", [("/track", EVENT), ("/track/batch", {"events": [EVENT]})])
def test_ingest_echoes_the_origin_with_credentials(client, path, body):
    for response in (
        client.post(path, json=body, headers={"Origin": ORIGIN}),
        client.post(path, json={}, headers={"Origin": ORIGIN}),  # errors too
        client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}),
    ):
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in response.headers["Vary"]


def test_ingest_without_an_origin_keeps_the_wildcard(client):
    response = client.post("/track", json=EVENT)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("path", ["/health", "/openapi.json", "/dashboard", "/analytics.js"])
def test_other_endpoints_keep_the_wildcard_whatever_the_origin(client, path):
    with client.get(path, headers={"Origin": ORIGIN}) as response:
        assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
