"""Access keys in the database: making secrets, storing only their digests, finding, listing and
revoking keys. No Flask here; the transaction belongs to the caller.

A secret is ``ak_`` followed by 40 hexadecimal digits from ``secrets`` (160 random bits). The
table keeps its SHA-256 digest and nothing from which the secret could be read back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from analytics.models import AccessKey, table_of

SECRET_PREFIX = "ak_"
SECRET_BYTES = 20
SCOPES = ("ingest", "read", "admin")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# scheme://host[:port], as a browser writes an Origin header: no path, no trailing slash.
ORIGIN_PATTERN = re.compile(
    r"(https?)://([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"|\[[0-9a-f:.]+\])(?::(\d{1,5}))?",
    re.IGNORECASE,
)


class KeyProblem(Exception):
    """A key operation that cannot be done, with the line to show the operator."""


@dataclass(frozen=True)
class KeyRecord:
    """What a request needs to know about a key, read once and cached (see auth.KeyRing)."""

    id: int
    name: str
    secret_hash: str
    scopes: frozenset[str]
    origins: frozenset[str] | None
    rate: str | None
    revoked: bool

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def allows_origin(self, origin: str | None) -> bool:
        """A request without an Origin header is not a browser's: only browsers are bound."""
        return self.origins is None or origin is None or origin.lower() in self.origins


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_hex(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a secret: enough for a random secret of this length, which no
    dictionary or brute force can find, so a slow password hash would only slow requests."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            "a key name is 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_origin(origin: str) -> str:
    """An origin as browsers send it, lower-cased; ValueError for anything else."""
    match = ORIGIN_PATTERN.fullmatch(origin.strip())
    if not match or (match.group(3) and not 0 < int(match.group(3)) < 65536):
        raise ValueError(
            f"not an origin such as https://example.com or http://localhost:3000: {origin!r}"
        )
    return origin.strip().lower()


def _record(row: Row[*tuple[Any, ...]]) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        secret_hash=row.secret_hash,
        scopes=frozenset(row.scopes.split()),
        origins=frozenset(row.origins.split()) if row.origins else None,
        rate=row.rate,
        revoked=row.revoked_at is not None,
    )


_LOOKUP = select(
    AccessKey.id,
    AccessKey.name,
    AccessKey.secret_hash,
    AccessKey.scopes,
    AccessKey.origins,
    AccessKey.rate,
    AccessKey.revoked_at,
)


def find_key(conn: Connection, digest: str) -> KeyRecord | None:
    """The key whose secret has this digest (revoked or not), or None."""
    row = conn.execute(_LOOKUP.where(AccessKey.secret_hash == digest)).first()
    # The index found the row by its digest; comparing the digests again in constant time
    # keeps the decision itself free of timing differences.
    if row is None or not hmac.compare_digest(row.secret_hash, digest):
        return None
    return _record(row)


def create_key(
    session: Session,
    name: str,
    scopes: list[str],
    origins: list[str],
    rate: str | None,
    now: datetime,
) -> str:
    """Store a new key and return its secret (which is not stored); KeyProblem when the name is
    taken."""
    secret = new_secret()
    session.add(
        AccessKey(
            name=name,
            secret_hash=hash_secret(secret),
            scopes=" ".join(scope for scope in SCOPES if scope in scopes),
            origins=" ".join(dict.fromkeys(origins)) or None,
            rate=rate,
            created_at=now,
        )
    )
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise KeyProblem(f"a key named {name!r} already exists") from None
    return secret


def list_keys(session: Session) -> list[AccessKey]:
    return list(session.scalars(select(AccessKey).order_by(AccessKey.created_at, AccessKey.id)))


def revoke_key(session: Session, name: str, now: datetime) -> AccessKey:
    """Mark the key revoked (kept, so that its name stays taken); KeyProblem when there is no
    key of that name."""
    key = session.scalar(select(AccessKey).where(AccessKey.name == name))
    if key is None:
        raise KeyProblem(f"no key named {name!r}")
    if key.revoked_at is None:
        key.revoked_at = now
    return key


def record_use(conn: Connection, key_id: int, now: datetime, interval: timedelta) -> bool:
    """Set the key's last-use time to ``now`` unless it was set less than ``interval`` ago (by
    any process); whether a row was written."""
    table = table_of(AccessKey)
    result = conn.execute(
        update(table)
        .where(
            table.c.id == key_id,
            or_(table.c.last_used_at.is_(None), table.c.last_used_at <= now - interval),
        )
        .values(last_used_at=now)
    )
    return result.rowcount > 0
