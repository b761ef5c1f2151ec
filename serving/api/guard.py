"""The API's front gate, below FastAPI: who is calling, and how much they may send.

A pure ASGI middleware, so it runs before any route reads a byte of the body:

- every `/v1/` request needs a valid key, checked from the `Authorization` header alone;
  without one the answer is 401 and the body is never read (the connection is closed, so
  the rest of it is not even received);
- while the database (where keys live) is unreachable the answer is 503 with `Retry-After`,
  not a 401 that would tell a client its good key is wrong;
- the body is counted as it streams, whether or not `Content-Length` was sent (a chunked
  body has none), and the request stops with 413 at the limit: multipart uploads get the
  upload limit plus room for the form framing, anything else (JSON) a small one;
- at most `max_concurrent_uploads` multipart requests are in flight at once; the next one
  gets 503 with `Retry-After` instead of a spool file;
- each key may send `rate_limit_per_minute` requests to /v1/detect and /v1/events (bursts
  of `rate_limit_burst`); past that, 429 with `Retry-After`;
- every response carries security headers (nosniff, no framing, no referrer; API responses
  also a script-less CSP and no-store).

Roles (403) stay with each route (`serving.api.deps.require`), which reads the caller
this gate found.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from serving.auth import Principal, authenticate
from serving.store.db import Database

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIX = "/v1/"
MAX_KEY_LENGTH = 256
MULTIPART_FRAMING_BYTES = 1024 * 1024  # form boundaries and part headers around the file
BUSY_RETRY_AFTER_S = 1
DATABASE_RETRY_AFTER_S = 5


# Expensive per request (a decode and a detector run, or a case write): limited per key.
RATE_LIMITED_PATHS = frozenset({"/v1/detect", "/v1/events"})
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]
# JSON and evidence files run no script and are never framed; nor are they cached on the way.
API_HEADERS = [(b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
               (b"cache-control", b"no-store")]
# FastAPI's OpenAPI pages load Swagger UI / ReDoc scripts from a CDN: no CSP of ours there.
DOC_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})


@dataclass(frozen=True)
class GateLimits:
    upload_max_bytes: int  # one uploaded file (multipart bodies get framing room on top)
    json_max_bytes: int  # any other body
    max_concurrent_uploads: int
    rate_per_minute: int = 0  # per key on RATE_LIMITED_PATHS; 0: unlimited
    rate_burst: int = 1


@dataclass
class TokenBuckets:
    """Requests per API key: `burst` at once, refilled at `per_minute` (0: unlimited)."""

    per_minute: int
    burst: int
    state: dict[int, tuple[float, float]] = field(default_factory=dict)  # key id -> (tokens, when)

    def take(self, key_id: int, now: float) -> float:
        """0 when this request may go (and counts it); else the seconds until one may."""
        if self.per_minute == 0:
            return 0.0
        rate = self.per_minute / 60
        tokens, then = self.state.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * rate)
        if tokens < 1:
            self.state[key_id] = (tokens, now)
            return (1 - tokens) / rate
        self.state[key_id] = (tokens - 1, now)
        return 0.0


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    return SECURITY_HEADERS if path in DOC_PATHS else SECURITY_HEADERS + API_HEADERS


def with_security_headers(send: Send, path: str) -> Send:
    """`send`, adding the security headers to the response's start."""
    extra = security_headers(path)

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers


class BodyTooLarge(HTTPException):
    """Raised from inside `receive`: FastAPI passes HTTPExceptions from body parsing through
    to the app's handler, which answers 413 as JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes", headers={"Connection": "close"})


async def answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """A JSON error sent straight from the gate. `Connection: close` makes the server drop
    the connection instead of reading and discarding the body we refused."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def bearer_key(headers: Headers) -> str | None:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def counted(receive: Receive, limit: int) -> Receive:
    """`receive`, raising BodyTooLarge as soon as the body passes `limit` bytes."""
    seen = 0

    async def receive_counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return receive_counted


class RequestGate:
    def __init__(self, app: App, db: Database, limits: GateLimits) -> None:
        self.app = app
        self.db = db
        self.limits = limits
        # One event loop runs every request, so the counter and the buckets need no lock.
        self.uploads_in_flight = 0
        self.buckets = TokenBuckets(limits.rate_per_minute, limits.rate_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._gate(scope, receive, with_security_headers(send, scope["path"]))

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if scope["path"].startswith(PROTECTED_PREFIX):
            try:
                refusal = await self._identify(scope, headers)
            except DBAPIError as exc:  # keys live in the database: it is away, not the key wrong
                await answer(send, 503, f"database unreachable ({type(exc.orig or exc).__name__}): "
                                        "the key cannot be checked; nothing was stored, retry later",
                             {"Retry-After": str(DATABASE_RETRY_AFTER_S)})
                return
            if refusal is not None:
                await answer(send, 401, refusal, {"WWW-Authenticate": "Bearer"})
                return
            if scope["path"] in RATE_LIMITED_PATHS:
                wait_s = self.buckets.take(scope["state"]["principal"].key_id, time.monotonic())
                if wait_s > 0:
                    await answer(send, 429, "rate limit for this key reached; retry later",
                                 {"Retry-After": str(math.ceil(wait_s))})
                    return
        multipart = headers.get("content-type", "").lower().startswith("multipart/form-data")
        limit = self.limits.upload_max_bytes + MULTIPART_FRAMING_BYTES if multipart else self.limits.json_max_bytes
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            await answer(send, 400, "invalid Content-Length")
            return
        if length is not None and int(length) > limit:  # refused before a byte is read
            await answer(send, 413, f"request body over {limit} bytes")
            return
        if not multipart:
            await self.app(scope, counted(receive, limit), send)
            return
        if self.uploads_in_flight >= self.limits.max_concurrent_uploads:
            await answer(send, 503, "too many uploads in progress; retry shortly",
                         {"Retry-After": str(BUSY_RETRY_AFTER_S)})
            return
        self.uploads_in_flight += 1
        try:
            await self.app(scope, counted(receive, limit), send)
        finally:
            self.uploads_in_flight -= 1

    async def _identify(self, scope: Scope, headers: Headers) -> str | None:
        """Puts the caller in the request state; returns why not (for a 401) otherwise."""
        key = bearer_key(headers)
        if key is None:
            return "missing API key: send Authorization: Bearer KEY"
        principal: Principal | None = None
        if len(key) <= MAX_KEY_LENGTH:
            principal = await run_in_threadpool(authenticate, self.db, key)
        if principal is None:
            return "invalid API key"
        scope.setdefault("state", {})["principal"] = principal
        return None
