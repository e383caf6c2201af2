"""The HTTP API: upload jobs, read results (poll, stream, or wait), health and stats.

``create_app`` only wires: the parts are built by ``dlaas.assemble.build_app`` into one
``WebContext`` (the only thing on ``app.state``), and each concern is a router in
``routes/`` or ``v2/``. A dependency for every route of one concern goes on its
``include_router`` line, e.g. ``dependencies=[Depends(require_key)]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from dlaas import __version__
from dlaas.errors import DlaasError, ModelNotFound, ModelUnavailable, WebError
from dlaas.web import security, v2
from dlaas.web.context import WebContext
from dlaas.web.routes import classify, docs, jobs, models, ops, page, whoami

log = logging.getLogger("dlaas.web")


def create_app(ctx: WebContext) -> FastAPI:
    """The app around ``ctx``: its routers, error handlers, security and lifespan."""
    dispatcher = ctx.dispatcher

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.hub.start(asyncio.get_running_loop())
        if dispatcher is not None:
            dispatcher.start()
        if ctx.source_jobs is not None:
            ctx.source_jobs.start_scanner()  # resumes listings a dead process left
        try:
            yield
        finally:
            if ctx.source_jobs is not None:
                ctx.source_jobs.close()
            if dispatcher is not None:
                await run_in_threadpool(dispatcher.stop)
            await run_in_threadpool(ctx.ingest.close)
            await run_in_threadpool(ctx.hub.stop)

    app = FastAPI(
        title="dlaas",
        version=__version__,
        summary="Image classification as a service: upload images, get ImageNet labels.",
        lifespan=lifespan,
        docs_url=None,  # routes.docs serves Swagger UI from the package instead
        redoc_url=None,
        telemetry=_telemetry(),
    )
    app.state.context = ctx
    _add_error_handlers(app)
    # The synchronous routes first: each request walks the routes in order, and these take
    # most of the traffic (no other route takes the same path with the same method).
    app.include_router(classify.build_router(ctx.settings.classify_timeout_s))
    app.include_router(jobs.router)
    app.include_router(
        jobs.upload_router(
            webhooks_on=bool(ctx.allow_hosts),
            max_files=ctx.settings.max_files_per_job,
            sources_on=ctx.source_jobs is not None,
        )
    )
    app.include_router(models.router)
    app.include_router(v2.build_router(ctx))  # early: routes are matched in order
    app.include_router(page.router)
    app.include_router(ops.router)
    app.include_router(v2.health_router)
    app.include_router(whoami.router)
    app.include_router(docs.router)
    docs.install_openapi(app, keys_on=ctx.keys is not None)
    security.install(app, ctx.settings, ctx.keys, ctx.limiter)
    return app


def _telemetry() -> TelemetryConfig:
    """FastAPI's OpenTelemetry hooks, on only where a provider is configured at start-up.

    Unconfigured, FastAPI still asks the three global providers (an ``os.environ`` look-up
    each) on every request: ~7% of the web tier's CPU under load, for nothing. Tracing
    set up by ``opentelemetry-instrument`` or the ``OTEL_PYTHON_*_PROVIDER`` variables
    happens before the app is built, so deciding here keeps it working.
    """
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider

    def configured(provider: object) -> bool:
        return not type(provider).__name__.lstrip("_").startswith(("Proxy", "NoOp"))

    return {
        "tracing": configured(trace.get_tracer_provider()),
        "metrics": configured(metrics.get_meter_provider()),
        "logs": configured(get_logger_provider()),
    }


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal is ``{"error": ..., "detail": ...}``; on ``/v2`` the protocol's own
    ``{"error": "<detail>"}``, which Triton's and KServe's clients read."""

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> JSONResponse:
        if v2.is_v2(request):
            return v2.error_response(exc.status_code, exc.detail, exc.headers)
        body: dict[str, Any] = {"error": exc.error, "detail": exc.detail}
        body.update(exc.extra)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ModelNotFound)
    async def _no_model(request: Request, exc: ModelNotFound) -> JSONResponse:
        return await _web_error(request, WebError(404, "model_not_found", str(exc)))

    @app.exception_handler(ModelUnavailable)
    async def _model_down(request: Request, exc: ModelUnavailable) -> JSONResponse:
        return await _web_error(request, WebError(503, "model_unavailable", str(exc)))

    @app.exception_handler(DlaasError)
    async def _backend_error(request: Request, exc: DlaasError) -> JSONResponse:
        log.error("backend_error", extra={"error": str(exc)})
        if v2.is_v2(request):
            return v2.error_response(503, f"{exc}; try again shortly")
        return JSONResponse(
            {"error": "backend_unavailable", "detail": f"{exc}; try again shortly"},
            status_code=503,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        if v2.is_v2(request):
            return v2.error_response(422, problems)
        return JSONResponse({"error": "bad_request", "detail": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed(app, request)}
        if v2.is_v2(request):
            return v2.error_response(exc.status_code, str(exc.detail), headers)
        return JSONResponse(
            {"error": _slug(exc.status_code), "detail": str(exc.detail)},
            status_code=exc.status_code,
            headers=headers,
        )


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _allowed(app: FastAPI, request: Request) -> str:
    """Every method the path takes: Starlette's ``Allow`` names only the first route that
    matches the path, and ``GET`` and ``DELETE /v1/jobs/{job_id}`` are two routes. Each
    method is asked of the routes' own ``matches``, as the router would."""
    allowed = []
    for method in METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def _slug(status_code: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        status_code, f"http_{status_code}"
    )
