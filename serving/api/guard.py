"""The service's front gate, below FastAPI: who is calling, and how much they may send.

A pure ASGI middleware, so it runs before any route reads a byte of the body, and before
a request takes any upload slot:

- every `/v1/` request needs a valid key, checked from the `Authorization` header alone;
  without one the answer is 401 and the body is never read (the connection is closed, so
  the rest of it is not even received);
- a state-changing request to the review page needs a live session (its cookie), except the
  sign-in form itself; without one, 401 before the body is read;
- while the database (where keys and sessions live) is unreachable the answer is 503 with
  `Retry-After`, not a 401 that would tell a client its good key is wrong;
- the body is counted as it streams, whether or not `Content-Length` was sent (a chunked
  body has none), and the request stops with 413 at the limit: multipart uploads to `/v1/`
  get the upload limit plus room for the form framing, a body from someone not signed in
  (the sign-in form) `ANONYMOUS_MAX_BYTES`, the page's other forms (admin) `FORM_MAX_BYTES`,
  anything else (JSON) `json_max_bytes`;
- the whole body must arrive within `body_timeout_s`: one that stalls or trickles (slow
  loris) gets 408 and gives back what it held;
- at most `max_concurrent_uploads` multipart uploads are in flight at once, only from
  authenticated keys, a share of them kept for camera keys (`CAMERA_UPLOAD_SHARE`): the next
  one gets 503 with `Retry-After` instead of a spool file;
- each key may send `rate_limit_per_minute` requests to /v1/detect and /v1/events (bursts
  of `rate_limit_burst`); past that, 429 with `Retry-After`;
- the caller's address is the connection's peer; `X-Forwarded-For` is believed only from
  `trusted_proxies` (the login limit counts per address);
- a query string holding a NUL character (`%00`) gets 422: no filter or reason holds one, and
  PostgreSQL text cannot store one (form and JSON fields refuse it where they are read);
- every response carries security headers (nosniff, no framing, no referrer; API responses
  also a script-less CSP and no-store), and a redirect never names a host (the `Host`
  header is the client's to make up).

Roles (403) stay with each route (`serving.api.deps.require`), which reads the caller
this gate found.
"""

from __future__ import annotations

import asyncio
import ipaddress
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
from starlette.requests import cookie_parser

from serving.audit import Actor, current_actor
from serving.auth import Principal, authenticate
from serving.clock import SYSTEM_CLOCK, WallClock
from serving.store.db import Database
from serving.web.sessions import SESSION_COOKIE, session_account

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
# Forms are a few fields: the sign-in form a name and a password, so a body from someone
# not signed in gets 64 KiB; the admin forms at most a camera entry of 64 KiB characters,
# which URL-encoding may triple.
ANONYMOUS_MAX_BYTES = 64 * 1024
FORM_MAX_BYTES = 256 * 1024
# Of the upload slots, this share is only for camera keys: people's /v1/detect calls
# cannot crowd out the cameras' events.
CAMERA_UPLOAD_SHARE = 0.25
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The only state-changing page request someone not signed in may send.
OPEN_FORM_PATHS = frozenset({"/login"})


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
    body_timeout_s: float = 60.0  # the whole body must have arrived by then
    trusted_proxies: tuple[str, ...] = ()  # addresses or networks whose X-Forwarded-For is believed

    @property
    def camera_reserved_uploads(self) -> int:
        if self.max_concurrent_uploads < 2:
            return 0
        return max(1, round(self.max_concurrent_uploads * CAMERA_UPLOAD_SHARE))


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


def relative_location(value: bytes) -> bytes:
    """A redirect target without scheme and host: Starlette builds absolute ones from the
    request's Host header (the trailing-slash redirect), which the client chose."""
    text = value.decode("latin-1")
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme:
        return value if not text.startswith("//") else b"/" + value.lstrip(b"/")
    _host, slash, path = rest.partition("/")
    return ("/" + path if slash else "/").encode("latin-1")


def with_security_headers(send: Send, path: str) -> Send:
    """`send`, adding the security headers to the response's start, redirects made relative."""
    extra = security_headers(path)

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, relative_location(v) if k.lower() == b"location" else v)
                       for k, v in message.get("headers", [])]
            message = {**message, "headers": [*headers, *extra]}
        await send(message)

    return send_with_headers


class BodyTooLarge(HTTPException):
    """Raised from inside `receive`: FastAPI passes HTTPExceptions from body parsing through
    to the app's handler, which answers 413 as JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes", headers={"Connection": "close"})


class BodyTimeout(HTTPException):
    """Raised from inside `receive` when the body has not arrived in time: 408, and the
    request (with the upload slot it holds) ends."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"request body not received within {timeout_s:g} s",
                         headers={"Connection": "close"})


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


def counted(receive: Receive, limit: int, timeout_s: float | None = None) -> Receive:
    """`receive`, raising BodyTooLarge as soon as the body passes `limit` bytes, and
    BodyTimeout when it is not all there `timeout_s` after the first call. Once the body is
    complete, calls wait as long as they like (a streaming response listens for the client
    going away)."""
    seen = 0
    deadline: float | None = None
    complete = False

    async def receive_counted() -> Message:
        nonlocal seen, deadline, complete
        if timeout_s is None or complete:
            message = await receive()
        else:
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - now))
            except asyncio.TimeoutError:
                raise BodyTimeout(timeout_s) from None
        if message["type"] == "http.request":
            complete = complete or not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return receive_counted


def parse_networks(values: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses or CIDR networks; a ValueError names the bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {value!r} is not an IP address or network") from None
    return tuple(networks)


def _in(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str, forwarded_for: str | None,
                   trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """The connection's peer; only when that is a trusted proxy, the nearest address in
    `X-Forwarded-For` that is not one (the header's left part is the client's to invent)."""
    if not trusted or not forwarded_for or not _in(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer


class RequestGate:
    def __init__(self, app: App, db: Database, limits: GateLimits, clock: WallClock = SYSTEM_CLOCK) -> None:
        self.app = app
        self.db = db
        self.clock = clock  # the service's: web sessions expire on it
        self.limits = limits
        self.trusted = parse_networks(limits.trusted_proxies)
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
        state = scope.setdefault("state", {})
        peer = scope["client"][0] if scope.get("client") else "?"
        state["client_address"] = client_address(peer, headers.get("x-forwarded-for"), self.trusted)
        path = scope["path"]
        query = scope.get("query_string", b"").lower()
        if b"%00" in query or b"\x00" in query:
            await answer(send, 422, "a query parameter holds a NUL character (%00)")
            return
        api = path.startswith(PROTECTED_PREFIX)
        signed_in = False
        try:
            if api:
                refusal = await self._identify(scope, headers)
                if refusal is not None:
                    await answer(send, 401, refusal, {"WWW-Authenticate": "Bearer"})
                    return
                signed_in = True
            elif scope["method"] not in SAFE_METHODS:
                signed_in = await self._identify_session(scope, headers)
                if not signed_in and path not in OPEN_FORM_PATHS:
                    await answer(send, 401, "not signed in")
                    return
        except DBAPIError as exc:  # keys live in the database: it is away, not the key wrong
            await answer(send, 503, f"database unreachable ({type(exc.orig or exc).__name__}): "
                                    "the caller cannot be checked; nothing was stored, retry later",
                         {"Retry-After": str(DATABASE_RETRY_AFTER_S)})
            return
        if api and path in RATE_LIMITED_PATHS:
            wait_s = self.buckets.take(state["principal"].key_id, time.monotonic())
            if wait_s > 0:
                await answer(send, 429, "rate limit for this key reached; retry later",
                             {"Retry-After": str(math.ceil(wait_s))})
                return
        content_type = headers.get("content-type", "").lower()
        upload = api and content_type.startswith("multipart/form-data")
        if upload:
            limit = self.limits.upload_max_bytes + MULTIPART_FRAMING_BYTES
        elif not signed_in:
            limit = ANONYMOUS_MAX_BYTES
        elif not api and content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            limit = FORM_MAX_BYTES
        else:
            limit = self.limits.json_max_bytes
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            await answer(send, 400, "invalid Content-Length")
            return
        if length is not None and int(length) > limit:  # refused before a byte is read
            await answer(send, 413, f"request body over {limit} bytes")
            return
        body = counted(receive, limit, self.limits.body_timeout_s)
        if not upload:
            await self.app(scope, body, send)
            return
        if not self._take_upload_slot(state["principal"]):
            await answer(send, 503, "too many uploads in progress; retry shortly",
                         {"Retry-After": str(BUSY_RETRY_AFTER_S)})
            return
        try:
            await self.app(scope, body, send)
        finally:
            self.uploads_in_flight -= 1

    def _take_upload_slot(self, principal: Principal) -> bool:
        """Camera keys may fill every slot; other keys leave the cameras' share free."""
        slots = self.limits.max_concurrent_uploads
        if principal.role != "camera":
            slots -= self.limits.camera_reserved_uploads
        if self.uploads_in_flight >= slots:
            return False
        self.uploads_in_flight += 1
        return True

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
        scope["state"]["principal"] = principal
        current_actor.set(Actor("key", str(principal.key_id), principal.name))
        return None

    async def _identify_session(self, scope: Scope, headers: Headers) -> bool:
        """A live review-page session: its account in the request state."""
        token = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
        if not token:
            return False
        account = await run_in_threadpool(session_account, self.db, token, self.clock.now())
        if account is None:
            return False
        scope["state"]["account"] = account
        current_actor.set(Actor("user", str(account.id), account.name))
        return True
