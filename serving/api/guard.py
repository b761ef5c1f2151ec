"""The API's front gate, below FastAPI: who is calling, and how much they may send.

A pure ASGI middleware, so it runs before any route reads a byte of the body:

- every `/v1/` request needs a valid key, checked from the `Authorization` header alone;
  without one the answer is 401 and the body is never read (the connection is closed, so
  the rest of it is not even received);
- the body is counted as it streams, whether or not `Content-Length` was sent (a chunked
  body has none), and the request stops with 413 at the limit: multipart uploads get the
  upload limit plus room for the form framing, anything else (JSON) a small one;
- at most `max_concurrent_uploads` multipart requests are in flight at once; the next one
  gets 503 with `Retry-After` instead of a spool file.

Roles (403) stay with each route (`serving.api.deps.require`), which reads the caller
this gate found.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class GateLimits:
    upload_max_bytes: int  # one uploaded file (multipart bodies get framing room on top)
    json_max_bytes: int  # any other body
    max_concurrent_uploads: int


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
        # One event loop runs every request, so a plain counter needs no lock.
        self.uploads_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"].startswith(PROTECTED_PREFIX):
            refusal = await self._identify(scope, headers)
            if refusal is not None:
                await answer(send, 401, refusal, {"WWW-Authenticate": "Bearer"})
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
