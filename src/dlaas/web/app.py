"""The HTTP API: upload jobs, read results (poll, stream, or wait), health and stats.

``create_app`` builds the shared parts once (``WebContext`` on ``app.state.context``) and
mounts one router per concern: ``jobs``, ``classify``, ``ops`` and ``page``. A dependency
for every route of one concern goes on its ``include_router`` line, e.g.
``app.include_router(jobs.router, dependencies=[Depends(require_key)])``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dlaas import __version__
from dlaas.errors import DlaasError, WebError
from dlaas.protocol import Reply
from dlaas.queue.base import Queue
from dlaas.settings import Settings
from dlaas.storage.base import Storage
from dlaas.web import classify, jobs, ops, page, security, v2
from dlaas.web import lifecycle as lifecycle_routes
from dlaas.web.context import WebContext
from dlaas.web.ingest import JobService
from dlaas.web.lifecycle import Lifecycle
from dlaas.web.metrics import Metrics
from dlaas.web.replies import ReplyHub
from dlaas.web.tenancy import Limits
from dlaas.web.uploads import BacklogGate, UploadReader

log = logging.getLogger("dlaas.web")


def create_app(
    settings: Settings,
    storage: Storage,
    queue: Queue,
    *,
    stats_provider: Callable[[], dict[str, Any]] | None = None,
    on_enqueued: Callable[[], None] | None = None,
    workers_readiness: Callable[[], str] | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """Build the app around already-open backends.

    ``stats_provider`` is the controller's ``stats``; ``on_enqueued`` its ``wake``, so an
    idle service starts workers the moment a job arrives rather than at the next tick.
    ``workers_readiness`` is the launcher's ``readiness``: ``/readyz`` waits for it too.
    ``limits`` are the owner limits shared with other replicas (``dlaas.web.shared_limits``);
    without them each limit is kept in this process.
    """
    hub = ReplyHub(
        queue,
        storage,
        refresh_s=settings.reply_queue_stale_s / 3,
        stale_after_s=settings.reply_queue_stale_s,
    )
    metrics = Metrics()

    def accepted(n: int) -> None:
        metrics.images_accepted(n)
        if on_enqueued is not None:
            on_enqueued()

    if limits is None:
        limits = Limits.in_process(
            settings.rate_limit_per_owner, settings.rate_limit_burst, settings.max_backlog_per_owner
        )
    owners = limits.backlog
    service = JobService(
        storage,
        queue,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        on_accepted=accepted,
        owner_backlog=owners,
    )

    lifecycle = Lifecycle.build(settings, storage, queue)

    def on_reply(reply: Reply) -> None:
        metrics.observe_reply(reply)
        owners.observe_reply(reply)
        if lifecycle.dispatcher is not None and reply.status != "classifying":
            lifecycle.dispatcher.wake(reply.job_id)  # its webhook may be due now

    hub.on_reply = on_reply
    hub.on_salvaged = owners.observe_reply
    ctx = WebContext(
        settings=settings,
        storage=storage,
        queue=queue,
        hub=hub,
        service=service,
        metrics=metrics,
        uploads=UploadReader(settings, BacklogGate(queue, settings.max_backlog), owners),
        stats_provider=stats_provider,
        workers_readiness=workers_readiness,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.start(asyncio.get_running_loop())
        if lifecycle.dispatcher is not None:
            lifecycle.dispatcher.start()
        try:
            yield
        finally:
            if lifecycle.dispatcher is not None:
                await run_in_threadpool(lifecycle.dispatcher.stop)
            await run_in_threadpool(hub.stop)

    app = FastAPI(
        title="dlaas",
        version=__version__,
        summary="Image classification as a service: upload images, get ImageNet labels.",
        lifespan=lifespan,
        docs_url=None,  # dlaas.web.docs serves Swagger UI from the package instead
        redoc_url=None,
        telemetry=_telemetry(),
    )
    app.state.context = ctx
    app.state.hub = hub
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle
    _add_error_handlers(app)

    app.include_router(lifecycle_routes.router)  # before jobs: GET /v1/jobs, DELETE
    app.include_router(jobs.router)
    app.include_router(classify.build_router(settings.classify_timeout_s))
    app.include_router(v2.build_router(settings))  # early: routes are matched in order
    app.include_router(page.router)
    app.include_router(ops.router)
    app.include_router(v2.health_router)
    security.install(app, settings, limits.rate)
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
        if v2.is_v2(request):
            return v2.error_response(exc.status_code, str(exc.detail))
        return JSONResponse(
            {"error": _slug(exc.status_code), "detail": str(exc.detail)},
            status_code=exc.status_code,
        )


def _slug(status_code: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        status_code, f"http_{status_code}"
    )
