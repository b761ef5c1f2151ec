"""Signed-in browsers: session cookies, CSRF tokens and login throttling.

Session tokens are random and stored hashed (like API keys). The CSRF token is a
double-submit cookie, renewed at sign-in: every state-changing request from the page
carries it back in a form field or header, which another site cannot read to copy."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select

from serving.accounts import Account
from serving.store.db import Database
from serving.store.models import User, WebSession

SESSION_COOKIE = "gw_session"
CSRF_COOKIE = "gw_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected, given)


def open_session(db: Database, account: Account, ttl_s: float) -> str:
    """A new session for `account`; returns the cookie value (only its hash is stored)."""
    token = new_token()
    now = datetime.now(timezone.utc)
    with db.transaction() as session:
        session.execute(delete(WebSession).where(WebSession.expires_at < now))
        session.add(WebSession(token_hash=_hash(token), user_id=account.id, expires_at=now + timedelta(seconds=ttl_s)))
    return token


def session_account(db: Database, token: str | None) -> Account | None:
    """The signed-in account of a live session, or None (expired, disabled, unknown)."""
    if not token or len(token) > 128:
        return None
    now = datetime.now(timezone.utc)
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


class LoginLimiter:
    """Failed sign-ins per user name and per address in a sliding window; at the limit,
    further tries are refused until the oldest failure leaves the window."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, name: str, address: str) -> float:
        """Seconds to wait before another try is allowed (0: go ahead)."""
        now = time.monotonic()
        with self._lock:
            waits = [times[0] + self.window_s - now for key in (f"user:{name}", f"addr:{address}")
                     if len(times := self._recent(key, now)) >= self.max_failures]
        return max(waits, default=0.0)

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"user:{name}", f"addr:{address}"):
                self._recent(key, now).append(now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{name}", None)
