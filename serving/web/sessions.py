"""Signed-in browsers: session cookies, CSRF tokens and login throttling.

Session tokens are random and stored hashed (like API keys). The CSRF token is derived
from the session's token (an HMAC keyed by it), so it is bound to the session: every
state-changing request from the page carries it back in a form field or header, which
another site cannot read, and a made-up value fails even when a cookie says the same. Before
sign-in the login form's token is derived the same way from a random pre-session cookie."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from serving.accounts import Account
from serving.store.db import Database
from serving.store.models import User, WebSession

SESSION_COOKIE = "gw_session"
PRESESSION_COOKIE = "gw_presession"  # HttpOnly; the login form's CSRF token is derived from it
CSRF_COOKIE = "gw_csrf"  # the current token, readable by scripts; never what a request is checked against
MAX_TOKEN_LENGTH = 128
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected, given)


def csrf_token(secret_token: str) -> str:
    """The CSRF token that goes with a session (or pre-session) token."""
    return hmac.new(secret_token.encode(), b"gridwatch csrf", hashlib.sha256).hexdigest()


def csrf_base(cookies: dict[str, str]) -> str | None:
    """The secret a request's CSRF token must be derived from: its session, else its pre-session."""
    token = cookies.get(SESSION_COOKIE) or cookies.get(PRESESSION_COOKIE)
    return token if token and len(token) <= MAX_TOKEN_LENGTH else None


def csrf_valid(cookies: dict[str, str], given: str | None) -> bool:
    base = csrf_base(cookies)
    return base is not None and tokens_match(csrf_token(base), given)


def open_session(db: Database, account: Account, ttl_s: float, now: datetime) -> str:
    """A new session for `account` from `now` (the service's clock); returns the cookie value
    (only its hash is stored)."""
    token = new_token()
    with db.transaction() as session:
        session.execute(delete(WebSession).where(WebSession.expires_at < now))
        session.add(WebSession(token_hash=_hash(token), user_id=account.id, expires_at=now + timedelta(seconds=ttl_s)))
    return token


def session_account(db: Database, token: str | None, now: datetime) -> Account | None:
    """The signed-in account of a session live at `now` (the service's clock), or None
    (expired, disabled, unknown)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    with db.sessions() as session:
        row = session.execute(
            select(User).join(WebSession, WebSession.user_id == User.id)
            .where(WebSession.token_hash == _hash(token), WebSession.expires_at > now, User.disabled_at.is_(None))
        ).scalar_one_or_none()
    return Account.of(row) if row else None


def close_session(db: Database, token: str | None) -> None:
    if token:
        with db.transaction() as session:
            session.execute(delete(WebSession).where(WebSession.token_hash == _hash(token)))


@dataclass(frozen=True)
class LoginTry:
    wait_s: float  # 0: go ahead (counted as a failure until it succeeds); else refused for this long
    newly_locked: bool = False  # the first refusal of this lock-out: audited once, not once per try


class LoginLimiter:
    """Sign-in tries per user name and per address in a sliding window. A try is counted
    before its password is checked (`begin`) and forgiven when it succeeds, under one lock,
    so concurrent guesses cannot all pass the check before any of them is counted: at most
    `max_failures` passwords are ever checked per window, however many arrive at once."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._reported: dict[str, float] = {}  # key -> the oldest failure of the lock-out already reported
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    @staticmethod
    def _keys(name: str, address: str) -> tuple[str, str]:
        return f"user:{name}", f"addr:{address}"

    def _full(self, name: str, address: str, now: float) -> list[str]:
        return [key for key in self._keys(name, address) if len(self._recent(key, now)) >= self.max_failures]

    def retry_after(self, name: str, address: str) -> float:
        """Seconds to wait before another try is allowed (0: go ahead); counts nothing."""
        now = time.monotonic()
        with self._lock:
            return max((self._failures[key][0] + self.window_s - now for key in self._full(name, address, now)),
                       default=0.0)

    def begin(self, name: str, address: str) -> LoginTry:
        """Before a password is checked: go ahead, the try counted as a failure; or refused
        (nothing counted, the password must not be checked)."""
        now = time.monotonic()
        with self._lock:
            full = self._full(name, address, now)
            if full:
                wait = max(self._failures[key][0] + self.window_s - now for key in full)
                new = [key for key in full if self._reported.get(key) != self._failures[key][0]]
                for key in new:
                    self._reported[key] = self._failures[key][0]
                return LoginTry(wait, newly_locked=bool(new))
            for key in self._keys(name, address):
                self._recent(key, now).append(now)
            return LoginTry(0.0)

    def succeeded(self, name: str, address: str) -> None:
        """The try `begin` counted was right: the name's failures are forgiven, and the
        address is charged only for its wrong tries."""
        user_key, address_key = self._keys(name, address)
        with self._lock:
            self._failures.pop(user_key, None)
            times = self._failures.get(address_key)
            if times:
                times.pop()
