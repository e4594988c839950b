"""``flask --app wsgi keys create|list|revoke``: what an operator sees, and what it stores."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analytics.models import AccessKey
from tests.helpers import bearer, create_key, run_flask

METRICS = "/metrics?start_date=2025-01-01&end_date=2025-01-31"


def key_count(engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(AccessKey))


def test_create_prints_the_secret_alone_on_the_last_line(database_url, engine):
    done = run_flask(
        database_url,
        "keys",
        "create",
        "web",
        "--scope",
        "ingest",
        "--origin",
        "https://shop.example",
        "--rate",
        "100/second",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    secret = lines[-1]
    # One word that `tail -n 1` hands to a script: the prefix and at least 128 random bits.
    assert re.fullmatch(r"ak_[0-9a-f]{40}", secret)
    assert all(secret not in line for line in lines[:-1])
    assert "web" in done.stdout and "ingest" in done.stdout
    with Session(engine) as session:
        key = session.scalar(select(AccessKey))
    assert (key.name, key.scopes, key.origins, key.rate) == (
        "web",
        "ingest",
        "https://shop.example",
        "100/second",
    )


def test_two_keys_never_share_a_secret(app):
    secrets = {create_key(app, f"k{n}", "read") for n in range(20)}
    assert len(secrets) == 20


def test_list_shows_everything_but_the_secret(app):
    secret = create_key(
        app, "reader", "read", "ingest", origins=("https://a.example",), rate="5000/hour"
    )
    create_key(app, "plain", "admin")
    assert app.test_client().get(METRICS, headers=bearer(secret)).status_code == 200

    result = app.test_cli_runner().invoke(args=["keys", "list"])
    assert result.exit_code == 0, result.output
    assert secret not in result.output and secret[3:11] not in result.output
    header, reader, plain = result.output.splitlines()
    assert header.split() == [
        "NAME",
        "SCOPES",
        "ORIGINS",
        "RATE",
        "CREATED",
        "LAST",
        "USED",
        "STATUS",
    ]
    created = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.fullmatch(
        rf"reader +ingest,read +https://a\.example +5000/hour +{created} +"
        rf"{created} +active",
        reader,
    )
    assert re.fullmatch(rf"plain +admin +\* +- +{created} +never +active", plain)


def test_list_without_keys(runner):
    result = runner.invoke(args=["keys", "list"])
    assert result.exit_code == 0
    assert "No keys" in result.output


def test_revoke(app, engine):
    create_key(app, "old", "read")
    result = app.test_cli_runner().invoke(args=["keys", "revoke", "old"])
    assert result.exit_code == 0, result.output
    assert "Revoked key 'old'" in result.output
    listed = app.test_cli_runner().invoke(args=["keys", "list"]).output
    assert re.search(r"^old .* revoked \d{4}-", listed, re.MULTILINE)
    assert key_count(engine) == 1  # kept, so that its name stays taken


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["keys", "create", "x", "--scope", "write"],
            "'write' is not one of 'ingest', 'read', 'admin'",
        ),
        (["keys", "create", "x"], "Missing option '--scope'"),
        (
            ["keys", "create", "x", "--scope", "read", "--origin", "shop.example"],
            "not an origin such as https://example.com",
        ),
        (
            ["keys", "create", "x", "--scope", "read", "--origin", "https://shop.example/"],
            "not an origin",
        ),
        (
            ["keys", "create", "x", "--scope", "read", "--origin", "https://a.example:99999"],
            "not an origin",
        ),
        (
            ["keys", "create", "x", "--scope", "read", "--rate", "fast"],
            "not a rate such as 100/second",
        ),
        (["keys", "create", "x", "--scope", "read", "--rate", "0/second"], "not a rate"),
        (["keys", "create", "x", "--scope", "read", "--rate", "10/fortnight"], "not a rate"),
        (["keys", "create", "no spaces", "--scope", "read"], "a key name is 1 to 64"),
        (["keys", "revoke", "nobody"], "no key named 'nobody'"),
    ],
)
def test_mistakes_exit_non_zero_with_a_clear_line_and_create_nothing(runner, engine, args, message):
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert message in result.output
    assert key_count(engine) == 0


def test_names_are_unique(app, engine):
    create_key(app, "dup", "read")
    result = app.test_cli_runner().invoke(args=["keys", "create", "dup", "--scope", "admin"])
    assert result.exit_code != 0
    assert "a key named 'dup' already exists" in result.output
    assert not re.search(r"ak_[0-9a-f]{40}", result.output)
    assert key_count(engine) == 1
    with Session(engine) as session:
        assert session.scalar(select(AccessKey.scopes)) == "read"


def test_an_unmigrated_database_is_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    done = run_flask(url, "keys", "list")
    assert done.returncode == 1
    assert "no keys table in the database" in done.stderr
    assert "(run flask --app analytics migrate)" in done.stderr
