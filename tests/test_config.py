"""Settings from the environment: defaults, validation, and refusing to start when wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

from analytics.config import ConfigError, default_database_url, load_config
from tests.helpers import ROOT


def test_defaults():
    cfg = load_config({})
    assert cfg.DATABASE_URL == default_database_url()
    assert cfg.DATABASE_URL.startswith("sqlite:///") and cfg.DATABASE_URL.endswith("analytics.db")
    assert cfg.RETENTION_DAYS == 30
    assert cfg.MAX_CONTENT_LENGTH == 1024 * 1024
    assert cfg.METADATA_MAX_BYTES == 4096
    assert cfg.BATCH_MAX_EVENTS == 1000
    assert cfg.LOG_LEVEL == "INFO"
    assert cfg.TRUSTED_PROXIES == 0


def test_the_default_database_is_in_the_working_folder(tmp_path, monkeypatch):
    """Not beside the code: an installed package sits in a site-packages folder."""
    monkeypatch.chdir(tmp_path)
    assert load_config({}).DATABASE_URL == f"sqlite:///{tmp_path / 'data' / 'analytics.db'}"


def test_the_roots_config_is_the_packages():
    import config

    assert (config.load_config, config.ConfigError) == (load_config, ConfigError)


def test_values_are_read_from_the_environment():
    cfg = load_config(
        {
            "DATABASE_URL": "postgresql://u@db/analytics",
            "RETENTION_DAYS": "7",
            "MAX_REQUEST_BYTES": "2048",
            "METADATA_MAX_BYTES": "100",
            "LOG_LEVEL": "debug",
            "TRUSTED_PROXIES": "1",
        }
    )
    # plain postgresql:// is served by psycopg 3
    assert cfg.DATABASE_URL == "postgresql+psycopg://u@db/analytics"
    assert (cfg.RETENTION_DAYS, cfg.MAX_CONTENT_LENGTH, cfg.METADATA_MAX_BYTES) == (7, 2048, 100)
    assert (cfg.LOG_LEVEL, cfg.TRUSTED_PROXIES) == ("DEBUG", 1)


@pytest.mark.parametrize(
    "environ, names",
    [
        ({"RETENTION_DAYS": "thirty"}, "RETENTION_DAYS"),
        ({"RETENTION_DAYS": "0"}, "RETENTION_DAYS"),
        ({"MAX_REQUEST_BYTES": "1MB"}, "MAX_REQUEST_BYTES"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"APP_ENV": "staging"}, "APP_ENV"),
        ({"APP_ENV": "production"}, "DATABASE_URL"),
    ],
)
def test_malformed_or_missing_values_name_the_variable(environ, names):
    with pytest.raises(ConfigError, match=names):
        load_config(environ)


def test_production_accepts_an_explicit_database():
    cfg = load_config({"APP_ENV": "production", "DATABASE_URL": "sqlite:////tmp/x.db"})
    assert cfg.DATABASE_URL == "sqlite:////tmp/x.db"


def test_the_server_refuses_to_start_with_a_clear_message():
    env = {"PATH": "/usr/bin:/bin", "APP_ENV": "production", "RETENTION_DAYS": "30"}
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DATABASE_URL must be set" in result.stderr


def test_access_defaults_follow_app_env():
    development = load_config({})
    assert (development.AUTH_MODE, development.RATE_LIMIT_ANONYMOUS) == ("open", None)
    assert development.RATE_LIMIT_STORAGE_URL == "memory://"
    production = load_config({"APP_ENV": "production", "DATABASE_URL": "sqlite:////tmp/x.db"})
    assert (production.AUTH_MODE, production.RATE_LIMIT_ANONYMOUS) == ("reads", "120/minute")
    assert production.RATE_LIMIT_STORAGE_URL == "memory://"


def test_access_settings_are_read_from_the_environment():
    cfg = load_config(
        {
            "APP_ENV": "production",
            "DATABASE_URL": "sqlite:////tmp/x.db",
            "AUTH_MODE": "ALL",
            "RATE_LIMIT_ANONYMOUS": "off",
            "RATE_LIMIT_STORAGE_URL": "redis://127.0.0.1:6379/2",
        }
    )
    assert (cfg.AUTH_MODE, cfg.RATE_LIMIT_ANONYMOUS) == ("all", None)
    assert cfg.RATE_LIMIT_STORAGE_URL == "redis://127.0.0.1:6379/2"
    assert load_config({"RATE_LIMIT_ANONYMOUS": "10/second;1000/hour"}).RATE_LIMIT_ANONYMOUS == (
        "10/second;1000/hour"
    )


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"AUTH_MODE": "keys"}, "AUTH_MODE must be one of open, reads, all"),
        ({"RATE_LIMIT_ANONYMOUS": "lots"}, "RATE_LIMIT_ANONYMOUS must be off or a rate"),
        ({"RATE_LIMIT_ANONYMOUS": "0/minute"}, "RATE_LIMIT_ANONYMOUS must be off or a rate"),
        ({"RATE_LIMIT_STORAGE_URL": "memcached://127.0.0.1"}, "RATE_LIMIT_STORAGE_URL must be a"),
        ({"RATE_LIMIT_STORAGE_URL": "127.0.0.1:6379"}, "RATE_LIMIT_STORAGE_URL must be a"),
    ],
)
def test_malformed_access_settings_are_refused(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ)
