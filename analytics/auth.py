"""Who is asking, and may they: access keys on every request, as AUTH_MODE says.

A request is handled in three steps, registered in this order by ``init_app``:
1. identify: the key it presents (``Authorization: Bearer``, or ``?key=`` on ingest), looked up
   in this process's key ring;
2. count it against its rate limit (ratelimits.py), per key or per client address, so that
   refused requests use up a flood's allowance too;
3. authorize: 401 or 403 with the contract's messages, or let it through.

The key ring caches each key for a moment, so that a request costs no query once its key has
been seen, and a revoked key is still refused by every process within seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, current_app, g, request
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from analytics import db, dialects
from analytics.errors import APIError
from analytics.keys import KeyRecord, find_key, hash_secret, record_use
from analytics.models import utcnow

EXTENSION_KEY = "analytics.keyring"
log = logging.getLogger(__name__)

INGEST, READ, ADMIN = "ingest", "read", "admin"
# The scope each path needs; None: public (no key, no limit). Any other path needs admin, so
# that a new endpoint is closed until it is given its scope here.
PATH_SCOPES: dict[str, str | None] = {
    "/track": INGEST,
    "/track/batch": INGEST,
    "/metrics": READ,
    "/sessions": READ,
    "/active-users": READ,
    "/events": READ,
    "/users/<user_id>": ADMIN,
    "/users/<user_id>/events": ADMIN,
    "/health": None,
    "/openapi.json": None,
    # The browser's pages and their files (api/pages.py): public, like the document they show.
    "/dashboard": None,
    "/docs": None,
    "/analytics.js": None,
    "/static/<path:filename>": None,
}
# The scopes for which each AUTH_MODE requires a key.
REQUIRED_IN_MODE = {
    "open": frozenset(),
    "reads": frozenset({READ, ADMIN}),
    "all": frozenset({INGEST, READ, ADMIN}),
}

KEY_REQUIRED = "API key required"
INVALID_KEY = "Invalid API key"
ORIGIN_NOT_ALLOWED = "Origin not allowed for this API key"
CHALLENGE = {"WWW-Authenticate": "Bearer"}

# How long a process trusts what it read about a key: the bound on how late a revocation is
# seen, kept well inside the contract's.
CACHE_SECONDS = 2.0
# A key's last-use time is written at most this often.
LAST_USE_INTERVAL = timedelta(minutes=1)


def scope_for(path: str) -> str | None:
    """What a route (its rule, e.g. ``/metrics``) needs a key to allow; None when public."""
    return PATH_SCOPES.get(path, ADMIN)


def not_allowed(scope: str) -> str:
    return f"This API key does not allow {scope}"


@dataclass(frozen=True)
class Access:
    """What a request needs and what it presented."""

    scope: str | None  # None: a public path, a preflight or an unknown path
    presented: bool = False
    key: KeyRecord | None = None  # the valid (unrevoked) key presented, if any


PUBLIC = Access(scope=None)


class KeyRing:
    """This process's cache of the keys in use.

    A key is read from the database the first time it is presented (so a new key works at
    once) and again once its entry is older than CACHE_SECONDS (so a revocation is seen
    soon). Secrets that match no key are not cached: nothing a client invents can grow the
    cache, and the anonymous rate limit bounds how often they cost a query.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._entries: dict[str, tuple[KeyRecord, float]] = {}
        self._used: dict[int, float] = {}

    def find(self, secret: str) -> KeyRecord | None:
        """The valid key with this secret, or None (unknown or revoked)."""
        digest = hash_secret(secret)
        now = self.clock()
        entry = self._entries.get(digest)
        key: KeyRecord | None
        if entry is not None and entry[1] > now:
            key = entry[0]
        else:
            with self.engine.connect() as conn:
                key = find_key(conn, digest)
            if key is None:
                self._entries.pop(digest, None)
            else:
                self._entries[digest] = (key, now + CACHE_SECONDS)
        return None if key is None or key.revoked else key

    def note_use(self, key: KeyRecord) -> None:
        """Keep the key's last-use time, writing it at most once per LAST_USE_INTERVAL."""
        now = self.clock()
        last = self._used.get(key.id)
        if last is not None and now - last < LAST_USE_INTERVAL.total_seconds():
            return
        self._used[key.id] = now
        try:
            with dialects.of(self.engine).writer_turn(self.engine), self.engine.begin() as conn:
                record_use(conn, key.id, utcnow(), LAST_USE_INTERVAL)
        except SQLAlchemyError as exc:
            # Bookkeeping only: the request itself does not depend on it.
            log.warning(
                "could not record the last use of key %s: %s", key.name, exc.__class__.__name__
            )


def keyring(app: Flask | None = None) -> KeyRing:
    ring: KeyRing = (app or current_app).extensions[EXTENSION_KEY]
    return ring


def current_access() -> Access:
    """What the current request needs and presented (PUBLIC before it was identified)."""
    access: Access = g.get("access", PUBLIC)
    return access


def _presented_secret(scope: str) -> str | None:
    kind, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if kind.lower() == "bearer":
        return token.strip()
    # navigator.sendBeacon cannot set headers; the query string carries only ingest keys,
    # which are meant to be seen by browsers anyway.
    if scope == INGEST:
        return request.args.get("key")
    return None


def _identify() -> None:
    if request.method == "OPTIONS" or request.url_rule is None:
        return  # preflights and unknown paths are never checked nor counted
    scope = scope_for(request.url_rule.rule)
    if scope is None:
        return
    secret = _presented_secret(scope)
    key = keyring().find(secret) if secret is not None else None
    g.access = Access(scope=scope, presented=secret is not None, key=key)


def _authorize() -> None:
    access = current_access()
    if access.scope is None:
        return
    if access.presented:
        key = access.key
        if key is None:
            raise APIError(401, INVALID_KEY, headers=CHALLENGE)
        if not key.allows(access.scope):
            raise APIError(403, not_allowed(access.scope))
        if not key.allows_origin(request.headers.get("Origin")):
            raise APIError(403, ORIGIN_NOT_ALLOWED)
        keyring().note_use(key)
    elif access.scope in REQUIRED_IN_MODE[current_app.config["AUTH_MODE"]]:
        raise APIError(401, KEY_REQUIRED, headers=CHALLENGE)


def init_app(app: Flask) -> None:
    """Identify, count, then authorize each request (see the module's description)."""
    from analytics import ratelimits

    app.extensions[EXTENSION_KEY] = KeyRing(app.extensions[db.EXTENSION_KEY]["engine"])
    app.before_request(_identify)
    ratelimits.init_app(app)
    app.before_request(_authorize)
