"""The FastAPI application factory."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.service import GridwatchService

log = logging.getLogger("gridwatch.api")


def create_app(service: GridwatchService) -> FastAPI:
    from serving.api.routes import system, v1
    from serving.web.app import install_web

    app = FastAPI(
        title="gridwatch",
        version="1",
        description="Street-violation cases from city cameras, for grid case systems. "
        "Authenticate with `Authorization: Bearer KEY`.",
    )
    app.state.service = service

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # noqa: ANN001, ANN202
        # Refuse oversized bodies before they are parsed or spooled.
        length = request.headers.get("content-length")
        limit = service.settings.upload_max_bytes + 1024 * 1024  # room for multipart framing
        if length is not None:
            if not length.isdigit():
                return JSONResponse({"detail": "invalid Content-Length"}, status_code=400)
            if int(length) > limit:
                return JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:500], "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: logged with its trace so it gets fixed.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.include_router(system)
    app.include_router(v1)
    install_web(app)
    return app
