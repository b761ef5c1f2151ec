"""Request dependencies: the service, and who is calling with which role."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.api.uploads import DecodeHolds, UploadDecoder
from serving.audit import record_alone
from serving.auth import Principal
from serving.service import GridwatchService


class RefusalLog:
    """Which (key, route) refusals were audited in the last `every_s` seconds (one per app)."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._last: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()

    def first(self, key_id: int, target: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get((key_id, target))
            if last is not None and now - last < self.every_s:
                return False
            if len(self._last) > 10_000:  # old entries matter no more than a minute
                self._last = {k: t for k, t in self._last.items() if now - t < self.every_s}
            self._last[(key_id, target)] = now
            return True


bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer KEY`")


def get_service(request: Request) -> GridwatchService:
    return request.app.state.service


def get_decoder(request: Request) -> UploadDecoder:
    return request.app.state.decoder


async def decode_holds(request: Request) -> AsyncIterator[DecodeHolds]:
    """The request's share of the decode budget, given back when the request is done."""
    holds = DecodeHolds(get_decoder(request))
    try:
        yield holds
    finally:
        await holds.release()


def require(*roles: str) -> Callable[..., Principal]:
    """403 with a key whose role is not allowed (admin always is). The key itself was
    checked before the body was read (serving.api.guard, 401); `bearer` stays here so the
    OpenAPI schema documents the scheme."""

    def dependency(request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:  # a route outside the gate's prefix: refuse rather than guess
            raise HTTPException(401, "missing API key: send Authorization: Bearer KEY",
                                headers={"WWW-Authenticate": "Bearer"})
        if not principal.may(roles):
            target = f"route:{request.method} {request.url.path}"[:160]
            # A refused change (a reload, a camera) is audited, once a minute per key and route,
            # so a key cannot bury the log under its own refusals.
            refusals: RefusalLog = request.app.state.refusals
            if request.method not in ("GET", "HEAD", "OPTIONS") and refusals.first(principal.key_id, target):
                record_alone(get_service(request).db, principal.name, "access.refused", target, {"role": principal.role})
            raise HTTPException(403, f"role {principal.role!r} may not do this; needs one of {', '.join(roles + ('admin',))}")
        return principal

    return dependency
