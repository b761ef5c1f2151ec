"""The FastAPI application factory."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api.deps import RefusalLog
from serving.api.guard import GateLimits, RequestGate, security_headers
from serving.api.uploads import UploadDecoder
from serving.evidence import EvidenceStorageError
from serving.health import held_fault
from serving.service import GridwatchService

log = logging.getLogger("gridwatch.api")
RELOAD_ROUTE = "/v1/models/reload"
RETRY_AFTER_S = 5  # while a part is away (database, evidence disk)


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

    settings = service.settings
    app.state.refusals = RefusalLog()
    app.state.decoder = UploadDecoder(settings.max_concurrent_decodes, settings.upload_max_pixels,
                                      settings.decode_memory_budget_mb * 2**20)
    app.add_middleware(RequestGate, db=service.db, limits=GateLimits(
        upload_max_bytes=settings.upload_max_bytes, json_max_bytes=settings.json_max_bytes,
        max_concurrent_uploads=settings.max_concurrent_uploads, rate_per_minute=settings.rate_limit_per_minute,
        rate_burst=settings.rate_limit_burst, body_timeout_s=settings.body_timeout_s,
        trusted_proxies=tuple(settings.trusted_proxies)), clock=service.clock)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:500], "type": e.get("type", "")}
                  for e in exc.errors()]
        if request.method == "POST" and getattr(request.scope.get("route"), "path", None) == RELOAD_ROUTE:
            # A reload refused by its request's schema (a path for a name, a broken body) is
            # logged and audited like one the service refused.
            principal = getattr(request.state, "principal", None)
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
            await run_in_threadpool(service.refuse_reload, principal.name if principal else "unknown",
                                    f"invalid request: {reason}", requested=exc.body)
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(DBAPIError)
    @app.exception_handler(EvidenceStorageError)
    async def part_away(request: Request, exc: Exception) -> JSONResponse:
        # The database away or the evidence disk full: nothing was stored; the sender keeps
        # its request and sends it again (an event twice is still one case). /readyz says which.
        name, reason = held_fault(exc) or ("service", "unavailable")
        return JSONResponse({"detail": f"{name} {reason}; nothing was stored, retry later"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: logged with its trace so it gets fixed.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # Answered by Starlette's outermost middleware, outside the gate: add its headers here.
        headers = {k.decode(): v.decode() for k, v in security_headers(request.url.path)}
        return JSONResponse({"detail": "internal error"}, status_code=500, headers=headers)

    app.include_router(system)
    app.include_router(v1)
    install_web(app)
    return app
