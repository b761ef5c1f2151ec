"""Request dependencies: the service, and who is calling with which role."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.auth import Principal, authenticate
from serving.service import GridwatchService

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer KEY`")


def get_service(request: Request) -> GridwatchService:
    return request.app.state.service


def require(*roles: str) -> Callable[..., Principal]:
    """401 without a valid key; 403 with a key whose role is not allowed (admin always is)."""

    def dependency(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
        service: GridwatchService = Depends(get_service),
    ) -> Principal:
        if credentials is None or not credentials.credentials:
            raise HTTPException(401, "missing API key: send Authorization: Bearer KEY",
                                headers={"WWW-Authenticate": "Bearer"})
        if len(credentials.credentials) > 256:
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        principal = authenticate(service.db, credentials.credentials)
        if principal is None:
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if not principal.may(roles):
            raise HTTPException(403, f"role {principal.role!r} may not do this; needs one of {', '.join(roles + ('admin',))}")
        return principal

    return dependency
