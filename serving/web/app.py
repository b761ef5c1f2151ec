"""Puts the review page on the API's application: routes, static files, security headers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from serving.web.hotkeys import resolve_hotkeys
from serving.web.routes import WEB_DIR, LoginRequired, NotAllowed, forbidden, pages
from serving.web.sessions import LoginLimiter

log = logging.getLogger("gridwatch.web")

# No inline script or style anywhere: everything the page runs comes from /static.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
WEB_PREFIXES = ("/login", "/logout", "/review", "/dashboard", "/admin", "/static")


def install_web(app: FastAPI) -> None:
    settings = app.state.service.settings
    app.state.login_limiter = LoginLimiter(settings.login_max_failures, settings.login_window_s)
    # A default key the city's own keys took (a newer release's new action): said once, at start.
    for warning in resolve_hotkeys(settings.review_hotkeys).warnings:
        log.warning(warning)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.include_router(pages)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"detail": "not signed in"}, status_code=401)

    @app.exception_handler(NotAllowed)
    async def not_allowed(request: Request, exc: NotAllowed) -> Response:
        return forbidden(request)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN202
        response = await call_next(request)
        if request.url.path == "/" or request.url.path.startswith(WEB_PREFIXES):
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
            if not request.url.path.startswith("/static"):
                response.headers.setdefault("Cache-Control", "no-store")
        return response
