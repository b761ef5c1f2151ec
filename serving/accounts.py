"""People who sign in to the review page: names, roles, Argon2id password hashes.

Machines keep using API keys (serving/auth.py); a user is a person with a password."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select

from serving.audit import record
from serving.store.db import Database
from serving.store.models import USER_ROLES, User

NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_PASSWORD = 8
# A hash that no password matches: verifying against it for unknown names costs the same
# time as for real ones, so response times do not tell which names exist.
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class AccountError(ValueError):
    """A user cannot be added or changed as asked; the message says why."""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    created_at: datetime
    disabled: bool

    @classmethod
    def of(cls, row: User) -> Account:
        return cls(row.id, row.name, row.role, row.created_at, row.disabled_at is not None)


def add_user(db: Database, name: str, role: str, password: str, *, actor: str) -> Account:
    if not NAME.fullmatch(name):
        raise AccountError("a user name is 1-64 letters, digits, '.', '_' or '-'")
    if role not in USER_ROLES:
        raise AccountError(f"role must be one of {', '.join(USER_ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password needs at least {MIN_PASSWORD} characters")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 on standard input, kept as surrogates
        raise AccountError("the password is not UTF-8 text") from None
    with db.transaction() as session:
        if session.scalar(select(User.id).where(User.name == name)) is not None:
            raise AccountError(f"user {name!r} exists")
        row = User(name=name, role=role, password_hash=_hasher.hash(password))
        session.add(row)
        record(session, actor, "user.add", f"user:{name}", None, {"role": role})
        session.flush()
        return Account.of(row)


def list_users(db: Database) -> list[Account]:
    with db.sessions() as session:
        return [Account.of(r) for r in session.scalars(select(User).order_by(User.name))]


def disable_user(db: Database, name: str, *, actor: str) -> Account:
    """The user can no longer sign in, and their open sessions stop working."""
    with db.transaction() as session:
        row = session.scalars(select(User).where(User.name == name)).one_or_none()
        if row is None:
            raise AccountError(f"no user {name!r}")
        if row.disabled_at is None:
            row.disabled_at = datetime.now(timezone.utc)
            record(session, actor, "user.disable", f"user:{name}", {"disabled": False}, {"disabled": True})
        return Account.of(row)


def check_password(db: Database, name: str, password: str) -> Account | None:
    """The active account with this name and password, else None."""
    with db.sessions() as session:
        row = session.scalars(select(User).where(User.name == name)).one_or_none()
    try:
        _hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None:
        return None
    return Account.of(row)
