"""Routes for operators: stats (JSON and a stream), Prometheus metrics, health and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from dlaas.errors import DlaasError
from dlaas.jobs import layout
from dlaas.web.context import Context, WebContext
from dlaas.web.routes.sse import EVENT_STREAM_DOC, EventStreamResponse, event_stream, sse

router = APIRouter(tags=["ops"])


async def current_stats(ctx: WebContext) -> dict[str, Any]:
    """The controller's stats; without one (an external fleet), the queue's own numbers."""
    if ctx.stats_provider is not None:
        return await run_in_threadpool(ctx.stats_provider)
    qs = await run_in_threadpool(ctx.jobs.queue.stats)
    return {
        "mode": "external",
        "queue": {
            "visible": qs.visible,
            "in_flight": qs.in_flight,
            "oldest_age_s": qs.oldest_age_s,
            "dead_lettered": qs.dead_lettered,
        },
        "workers": {},
        "history": [],
    }


@router.get("/v1/stats")
async def stats(ctx: Context) -> dict[str, Any]:
    """Queue depth, workers desired/running/starting, and recent history."""
    return await current_stats(ctx)


@router.get("/v1/stats/events", response_class=EventStreamResponse, responses=EVENT_STREAM_DOC)
async def stats_events(
    request: Request, ctx: Context, interval_s: float = Query(1.0, ge=0.2, le=60)
) -> StreamingResponse:
    """Server-Sent Events: a ``stats`` event (as ``GET /v1/stats``) every ``interval_s``."""

    async def stream() -> AsyncIterator[str]:
        while not await request.is_disconnected():
            yield sse("stats", await current_stats(ctx))
            await asyncio.sleep(interval_s)

    return event_stream(stream())


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics(ctx: Context) -> Response:
    """Prometheus exposition: queue, workers, images, latency histograms."""
    body, content_type = ctx.metrics.render(await current_stats(ctx))
    return Response(body, media_type=content_type)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def readiness(ctx: WebContext) -> tuple[bool, dict[str, str]]:
    """Storage and queue answer, replies are being read, and workers can start: whether
    all hold, and each check's answer. ``/readyz`` and ``/v2``'s probes both ask this."""
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(ctx.jobs.storage.exists, layout.READINESS_PROBE)
        checks["storage"] = "ok"
    except DlaasError as exc:
        checks["storage"] = str(exc)
    try:
        await run_in_threadpool(ctx.jobs.queue.stats)
        checks["queue"] = "ok"
    except DlaasError as exc:
        checks["queue"] = str(exc)
    checks["replies"] = "ok" if ctx.hub.alive else "reply reader is not running"
    if ctx.workers_readiness is not None:
        checks["workers"] = ctx.workers_readiness()
    return all(v == "ok" for v in checks.values()), checks


def shown_checks(request: Request, checks: dict[str, str]) -> dict[str, str] | None:
    """The checks' errors can name buckets and hosts: with keys on, only admins see them."""
    return checks if getattr(request.state, "role", "admin") == "admin" else None


@router.get("/readyz")
async def readyz(request: Request, ctx: Context) -> JSONResponse:
    """Storage and queue answer, replies are being read, and workers can start."""
    ok, checks = await readiness(ctx)
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
    shown = shown_checks(request, checks)
    if shown is not None:
        body["checks"] = shown
    return JSONResponse(body, status_code=200 if ok else 503)
