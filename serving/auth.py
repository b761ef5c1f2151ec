"""API keys: random, shown once, stored as SHA-256 hashes, each with one role.

Keys carry 256 bits of randomness, so a plain SHA-256 (not a slow password hash) is enough
to make a stolen table useless, and lookups stay one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from serving.audit import record
from serving.store.db import Database
from serving.store.models import ROLES, ApiKey

KEY_PREFIX = "gw_"


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: str

    def may(self, roles: tuple[str, ...]) -> bool:
        return self.role == "admin" or self.role in roles


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_name_problem(name: str) -> str | None:
    """Why `name` cannot name a key, or None. Names are shown in lists and the audit log: a
    control or formatting character (NUL, a line break, a right-to-left override) would hide
    or disguise what a reader sees there."""
    if not 1 <= len(name) <= 64:
        return "a key name is 1-64 characters"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "a key name must not contain control or formatting characters (NUL, line breaks, direction marks)"
    return None


def create_key(db: Database, name: str, role: str, key: str | None = None, *,
               expires_at: datetime | None = None, actor: str = "system") -> tuple[ApiKey, str]:
    """Store a key (a new random one unless given); returns the row and the key in clear.
    ValueError for a role or name it cannot take."""
    if (problem := key_name_problem(name)) is not None:
        raise ValueError(problem)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    key = key or new_key()
    with db.transaction() as session:
        session.add(row := _key_row(name, role, key, expires_at))
        session.flush()
        record(session, actor, "key.create", f"key:{row.id}", None, {"name": row.name, "role": role})
    return row, key


def _key_row(name: str, role: str, key: str, expires_at: datetime | None = None) -> ApiKey:
    return ApiKey(name=name[:64], prefix=key[:8], key_hash=hash_key(key), role=role, expires_at=expires_at)


def rotate_key(db: Database, key_id: int, overlap_s: float, *, actor: str = "system") -> tuple[ApiKey, str] | None:
    """A successor to an active key (same name and role), the old key expiring `overlap_s`
    from now (or sooner, if it already would): both work during the overlap, so clients
    switch without a gap. None if there is no active key `key_id`."""
    now = datetime.now(timezone.utc)
    with db.transaction() as session:
        old = session.get(ApiKey, key_id)
        if old is None or not _usable(old, now):
            return None
        ends = now + timedelta(seconds=overlap_s)
        before = {"expires_at": old.expires_at.isoformat() if old.expires_at else None}
        old.expires_at = min(old.expires_at, ends) if old.expires_at else ends
        key = new_key()
        session.add(row := _key_row(old.name, old.role, key))
        session.flush()
        record(session, actor, "key.rotate", f"key:{key_id}", before,
               {"expires_at": old.expires_at.isoformat(), "successor": row.id})
    return row, key


def _usable(row: ApiKey, now: datetime) -> bool:
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def ensure_admin_key(db: Database, given: str | None) -> str | None:
    """At start-up: make `given` (GRIDWATCH_ADMIN_KEY) a valid admin key, or, when no admin
    key exists yet, create one. Returns a key to print once, or None."""
    with db.sessions() as session:
        if given is not None:
            if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(given))) is None:
                create_key(db, "admin (environment)", "admin", given)
            return None
        if session.scalar(select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))):
            return None
    return create_key(db, "admin (first start)", "admin")[1]


def authenticate(db: Database, key: str) -> Principal | None:
    with db.sessions() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one_or_none()
    if row is None or not _usable(row, datetime.now(timezone.utc)):
        return None
    return Principal(row.id, row.name, row.role)


def revoke_key(db: Database, key_id: int, *, actor: str = "system") -> bool:
    with db.transaction() as session:
        row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = datetime.now(timezone.utc)
        record(session, actor, "key.revoke", f"key:{key_id}", {"name": row.name, "revoked": False},
               {"name": row.name, "revoked": True})
        return True


def list_keys(db: Database) -> list[ApiKey]:
    with db.sessions() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
