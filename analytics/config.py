"""Settings for the analytics API, read from environment variables.

Every setting has a default suited to a single box running on SQLite, except where the
production configuration requires an explicit value. A malformed value stops the process at
start-up with a message naming the variable, so a typo never turns into a silent default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# os.environ, or a plain dict of the same names (tests, checks of an environment file).
Environ = Mapping[str, str]


class ConfigError(RuntimeError):
    """A setting is missing or malformed."""


def default_database_url() -> str:
    """The embedded default: an SQLite file in ./data of the working folder (the project's
    root for the commands run from a checkout; the folder is created when used)."""
    # The working folder, not the package's: an installed package lives in a read-only
    # site-packages, far from the operator's data.
    return f"sqlite:///{Path.cwd() / 'data' / 'analytics.db'}"


def database_url(environ: Environ = os.environ) -> str:
    """DATABASE_URL, validated as an SQLAlchemy URL; the SQLite default when unset."""
    value = environ.get("DATABASE_URL", "").strip() or default_database_url()
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a valid database URL (expected e.g. "
            "postgresql+psycopg://user@host/db or sqlite:///path/to/file.db)"
        ) from None
    if url.drivername == "postgresql" or url.drivername == "postgres":
        # Plain postgresql:// would pick psycopg2, which is not installed: use psycopg 3.
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def _int(environ: Environ, name: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(environ: Environ, name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


AUTH_MODES = ("open", "reads", "all")
RATE_LIMIT_STORAGE_SCHEMES = ("memory", "redis", "rediss", "unix")


def parse_rate(text: str) -> str:
    """A rate limit as ``limits`` (and flask-limiter) reads it (``100/second``, ``5000 per
    hour``, several separated by ``;``), returned as given; ValueError when it is not one."""
    from limits import parse_many

    text = text.strip()
    try:
        items = parse_many(text) if text else []
    except ValueError:
        items = []
    if not items or any(item.amount < 1 for item in items):
        raise ValueError(f"not a rate such as 100/second or 5000/hour: {text!r}")
    return text


def _rate(environ: Environ, name: str, default: str | None) -> str | None:
    """A rate limit, or None for ``off``."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() == "off":
        return None
    try:
        return parse_rate(raw)
    except ValueError:
        raise ConfigError(f"{name} must be off or a rate such as 120/minute, got {raw!r}") from None


def _storage_url(environ: Environ, name: str) -> str:
    """Where rate-limit counts live: memory:// (each process alone) unless a Redis URL is given."""
    raw = environ.get(name, "").strip()
    if not raw:
        return "memory://"
    scheme = raw.partition("://")[0].lower() if "://" in raw else ""
    if scheme not in RATE_LIMIT_STORAGE_SCHEMES:
        raise ConfigError(
            f"{name} must be a redis:// URL (e.g. redis://127.0.0.1:6379/0) or "
            f"memory://, got {raw!r}"
        )
    return raw


def _choice(environ: Environ, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = environ.get(name, "").strip().upper() or default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


class Config:
    """Base settings. Instantiating reads and validates the environment."""

    TESTING = False
    REQUIRED: tuple[str, ...] = ()
    # What needs an access key, and how often a client without one may ask, unless set.
    DEFAULT_AUTH_MODE = "open"
    DEFAULT_RATE_LIMIT_ANONYMOUS: str | None = None

    def __init__(self, environ: Environ | None = None) -> None:
        environ = os.environ if environ is None else environ
        missing = [name for name in self.REQUIRED if not environ.get(name, "").strip()]
        if missing:
            raise ConfigError(f"{', '.join(missing)} must be set in this environment")
        self.DATABASE_URL = database_url(environ)
        self.RETENTION_DAYS = _int(environ, "RETENTION_DAYS", 30, minimum=1)
        self.MAX_CONTENT_LENGTH = _int(environ, "MAX_REQUEST_BYTES", 1024 * 1024, minimum=1024)
        self.METADATA_MAX_BYTES = _int(environ, "METADATA_MAX_BYTES", 4096, minimum=2)
        self.BATCH_MAX_EVENTS = _int(environ, "BATCH_MAX_EVENTS", 1000, minimum=1)
        self.LOG_LEVEL = _choice(
            environ, "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        )
        self.LOG_FORMAT = _choice(environ, "LOG_FORMAT", "TEXT", ("TEXT", "JSON")).lower()
        # The base URL /openapi.json names as its server; unset, the server is relative.
        self.PUBLIC_URL = environ.get("PUBLIC_URL", "").strip().rstrip("/")
        # Number of proxies in front of the app whose X-Forwarded-* headers are trusted.
        self.TRUSTED_PROXIES = _int(environ, "TRUSTED_PROXIES", 0)
        self.DB_POOL_SIZE = _int(environ, "DB_POOL_SIZE", 5, minimum=1)
        self.DB_POOL_TIMEOUT = _int(environ, "DB_POOL_TIMEOUT", 10, minimum=1)
        self.DB_CONNECT_TIMEOUT = _int(environ, "DB_CONNECT_TIMEOUT", 5, minimum=1)
        self.DB_STATEMENT_TIMEOUT_MS = _int(environ, "DB_STATEMENT_TIMEOUT_MS", 30000)
        # The longest a POST /track waits for its event's commit before answering 503.
        self.TRACK_WAIT_SECONDS = _int(environ, "TRACK_WAIT_SECONDS", 10, minimum=1)
        # The longest a write waits for a lock (SQLite's writer turn, PostgreSQL's row and
        # advisory locks) before its request answers 503.
        self.LOCK_WAIT_MS = _int(environ, "LOCK_WAIT_MS", 3000, minimum=1)
        mode = environ.get("AUTH_MODE", "").strip().lower() or self.DEFAULT_AUTH_MODE
        if mode not in AUTH_MODES:
            raise ConfigError(f"AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
        self.AUTH_MODE = mode
        self.RATE_LIMIT_ANONYMOUS = _rate(
            environ, "RATE_LIMIT_ANONYMOUS", self.DEFAULT_RATE_LIMIT_ANONYMOUS
        )
        self.RATE_LIMIT_STORAGE_URL = _storage_url(environ, "RATE_LIMIT_STORAGE_URL")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in dir(self) if k.isupper()}


class DevelopmentConfig(Config):
    """Local use: every setting may be left to its default."""


class ProductionConfig(Config):
    """Serving for real: the database must be named explicitly, reads need a key, and clients
    without one are held to a rate."""

    REQUIRED = ("DATABASE_URL",)
    DEFAULT_AUTH_MODE = "reads"
    DEFAULT_RATE_LIMIT_ANONYMOUS = "120/minute"


class TestingConfig(Config):
    TESTING = True


CONFIGS = {
    "development": DevelopmentConfig,
    "production": ProductionConfig,
    "testing": TestingConfig,
}


def load_config(environ: Environ | None = None) -> Config:
    """The configuration named by APP_ENV (development by default), read from the environment."""
    environ = os.environ if environ is None else environ
    name = environ.get("APP_ENV", "").strip().lower() or "development"
    if name not in CONFIGS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(CONFIGS)}, got {name!r}")
    return CONFIGS[name](environ)
