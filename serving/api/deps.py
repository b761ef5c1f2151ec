"""Request dependencies: the service, and who is calling with which role."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.api.uploads import UploadDecoder
from serving.auth import Principal
from serving.service import GridwatchService

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer KEY`")


def get_service(request: Request) -> GridwatchService:
    return request.app.state.service


def get_decoder(request: Request) -> UploadDecoder:
    return request.app.state.decoder


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
            raise HTTPException(403, f"role {principal.role!r} may not do this; needs one of {', '.join(roles + ('admin',))}")
        return principal

    return dependency
