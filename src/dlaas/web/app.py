"""The HTTP API: upload jobs, read results (poll, stream, or wait), health and stats."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from dlaas import __version__, protocol
from dlaas.errors import DlaasError, WebError
from dlaas.queue.base import Queue
from dlaas.settings import Settings
from dlaas.storage.base import Storage
from dlaas.web.ingest import JobService, PendingJob
from dlaas.web.metrics import Metrics
from dlaas.web.multipart import parse_form, read_body, single_file
from dlaas.web.replies import ReplyHub

log = logging.getLogger("dlaas.web")

STREAM_POLL_S = 2.0  # fallback storage check for results delivered to another web process


def create_app(
    settings: Settings,
    storage: Storage,
    queue: Queue,
    *,
    stats_provider: Callable[[], dict[str, Any]] | None = None,
    on_enqueued: Callable[[], None] | None = None,
    workers_readiness: Callable[[], str] | None = None,
) -> FastAPI:
    """Build the app around already-open backends.

    ``stats_provider`` is the controller's ``stats``; ``on_enqueued`` its ``wake``, so an
    idle service starts workers the moment a job arrives rather than at the next tick.
    ``workers_readiness`` is the launcher's ``readiness``: ``/readyz`` waits for it too.
    """
    hub = ReplyHub(queue, storage)
    metrics = Metrics()

    def accepted(n: int) -> None:
        metrics.images_accepted(n)
        if on_enqueued is not None:
            on_enqueued()

    service = JobService(
        storage,
        queue,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        on_accepted=accepted,
    )
    hub.on_reply = metrics.observe_reply

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            await run_in_threadpool(hub.stop)

    app = FastAPI(
        title="dlaas",
        version=__version__,
        summary="Image classification as a service: upload images, get ImageNet labels.",
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics

    # Errors: every refusal is {"error": ..., "detail": ...} --------------------

    @app.exception_handler(WebError)
    async def _web_error(_request: Request, exc: WebError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.error, "detail": exc.detail}
        body.update(exc.extra)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DlaasError)
    async def _backend_error(_request: Request, exc: DlaasError) -> JSONResponse:
        log.error("backend_error", extra={"error": str(exc)})
        return JSONResponse(
            {"error": "backend_unavailable", "detail": f"{exc}; try again shortly"},
            status_code=503,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"error": "bad_request", "detail": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": _slug(exc.status_code), "detail": str(exc.detail)},
            status_code=exc.status_code,
        )

    # Upload helpers ----------------------------------------------------------

    backlog = {"visible": 0, "checked_at": 0.0}

    async def check_backlog() -> None:
        """429 while the queue is over ``--max-backlog``; the depth is re-read once a second."""
        now = time.monotonic()
        if now - backlog["checked_at"] >= 1.0:
            backlog["visible"] = (await run_in_threadpool(queue.stats)).visible
            backlog["checked_at"] = now
        if backlog["visible"] >= settings.max_backlog:
            raise WebError(
                429,
                "busy",
                f"{backlog['visible']} images are waiting; retry in a few seconds",
                headers={"Retry-After": "5"},
            )

    def check_length(request: Request, limit_bytes: int) -> None:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit_bytes:
            raise WebError(
                413,
                "request_too_large",
                f"the request is {int(length) / 1e6:.1f} MB; "
                f"the limit is {limit_bytes / 1e6:.1f} MB",
            )

    def require_multipart(request: Request, field: str) -> str:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise WebError(
                415,
                "multipart_required",
                f"send the image as multipart/form-data in the field {field!r}",
            )
        return content_type

    def no_files(field: str) -> WebError:
        return WebError(
            400, "no_files", f"no file in the multipart field {field!r}; send the image there"
        )

    def too_large(filename: str | None) -> WebError:
        return WebError(
            413,
            "file_too_large",
            f"{filename!r} is over the {settings.max_upload_mb:g} MB limit "
            "(raise it with --max-upload-mb)",
        )

    async def form_files(request: Request, field: str, max_files: int) -> list[UploadFile]:
        await check_backlog()
        require_multipart(request, field)
        try:
            form = await request.form(max_files=max_files, max_fields=100)
        except StarletteHTTPException as exc:
            raise WebError(400, "bad_multipart", str(exc.detail)) from None
        files = [v for v in form.getlist(field) if isinstance(v, UploadFile)]
        if not files:
            raise no_files(field)
        return files

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise too_large(upload.filename)
        return data

    async def one_file(request: Request, field: str) -> tuple[str, bytes]:
        """The single uploaded image: sliced out of a simple body, else fully parsed."""
        limit = settings.max_upload_bytes + 1024 * 1024
        check_length(request, limit)
        await check_backlog()
        content_type = require_multipart(request, field)
        body = await read_body(request, limit)
        simple = single_file(body, content_type, field)
        if simple is not None:
            filename, data = simple
            if len(data) > settings.max_upload_bytes:
                raise too_large(filename)
            return filename or "upload", data
        form = await parse_form(request.headers, body, max_files=1)
        try:
            uploads = [v for v in form.getlist(field) if isinstance(v, UploadFile)]
            if not uploads:
                raise no_files(field)
            return uploads[0].filename or "upload", await read_upload(uploads[0])
        finally:
            await form.close()

    async def classify_one(request: Request, field: str, timeout_s: float) -> dict[str, Any]:
        filename, data = await one_file(request, field)
        job = PendingJob()
        image_id = protocol.new_id()
        future = hub.expect(image_id)
        try:
            await run_in_threadpool(_submit_one, service, job, filename, data, image_id, hub.name)
        except BaseException:
            hub.forget(image_id)
            raise
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            hub.forget(image_id)
            await run_in_threadpool(service.write_manifest, job)
            raise WebError(
                504,
                "timeout",
                f"no result within {timeout_s:g} s; the image is queued, poll "
                f"GET /v1/jobs/{job.job_id} for it",
                extra={"job_id": job.job_id, "image_id": image_id},
            ) from None
        if reply.result is not None:  # the worker sent it inline: no storage read
            result = dict(reply.result)
        else:
            result = await run_in_threadpool(service.result, reply.job_id, reply.image_id)
        result["filename"] = job.images[0]["filename"]
        return result

    # Routes ------------------------------------------------------------------

    @app.post("/v1/jobs", status_code=202, tags=["jobs"])
    async def create_job(
        request: Request,
        partial: bool = Query(
            False,
            description="accept the valid files and list the refused ones in `rejected`, "
            "instead of refusing the whole job",
        ),
    ) -> JSONResponse:
        """Upload one or many images (multipart field ``files``) as one job."""
        check_length(request, settings.max_upload_bytes * 64 + 1024 * 1024 * 1024)
        uploads = await form_files(request, "files", max_files=settings.max_files_per_job)
        job = PendingJob()
        rejected: list[dict[str, Any]] = []
        try:
            for index, upload in enumerate(uploads):
                try:
                    data = await read_upload(upload)
                    await run_in_threadpool(service.add, job, upload.filename or "upload", data)
                except WebError as exc:
                    if not partial:
                        raise
                    rejected.append(
                        {
                            "index": index,
                            "filename": upload.filename or "upload",
                            "status": exc.status_code,
                            "error": exc.error,
                            "detail": exc.detail,
                        }
                    )
            if partial and not job.images:
                raise WebError(
                    422, "no_valid_files", "every file was refused", extra={"rejected": rejected}
                )
            manifest = await run_in_threadpool(service.commit, job, hub.name, progress=True)
        except BaseException:
            await run_in_threadpool(service.abort, job)
            raise
        finally:
            await request.close()  # removes the spooled upload files
        images = [
            {"image_id": i["image_id"], "filename": i["filename"]} for i in manifest["images"]
        ]
        body: dict[str, Any] = {"job_id": job.job_id, "images": images}
        if partial:
            body["rejected"] = rejected
        return JSONResponse(body, status_code=202)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """Status counts and every result so far; works from any web process."""
        return await run_in_threadpool(service.status, job_id)

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"])
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: ``job``; ``classifying``, ``result`` per image; ``end``."""
        manifest = await run_in_threadpool(service.manifest, job_id)
        inbox = hub.subscribe(job_id)

        async def stream() -> AsyncIterator[str]:
            total = len(manifest["images"])
            seen: set[str] = set()
            counts = {"done": 0, "failed": 0}
            names = {i["image_id"]: i["filename"] for i in manifest["images"]}

            def emit(result: dict[str, Any]) -> str:
                seen.add(result["image_id"])
                counts[result["status"]] = counts.get(result["status"], 0) + 1
                result["filename"] = names.get(result["image_id"], "")
                return _sse("result", result)

            try:
                yield _sse("job", {"job_id": job_id, "total": total, "images": manifest["images"]})
                for result in await run_in_threadpool(service.results, job_id):
                    yield emit(result)
                while len(seen) < total:
                    if await request.is_disconnected():
                        return
                    try:
                        reply = await asyncio.wait_for(inbox.get(), STREAM_POLL_S)
                    except TimeoutError:
                        for result in await run_in_threadpool(service.results, job_id, seen):
                            yield emit(result)
                        yield ": keep-alive\n\n"
                        continue
                    if reply.image_id in seen:
                        continue
                    if reply.status == "classifying":
                        yield _sse("classifying", {"image_id": reply.image_id})
                        continue
                    result = await run_in_threadpool(service.result, job_id, reply.image_id)
                    yield emit(result)
                yield _sse("end", {"job_id": job_id, "total": total, **counts})
            finally:
                hub.unsubscribe(job_id, inbox)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/classify", tags=["classify"], response_class=JSONResponse)
    async def classify(
        request: Request,
        timeout_s: float = Query(settings.classify_timeout_s, gt=0, le=3600),
    ) -> JSONResponse:
        """Classify one image (multipart field ``file``) and wait for its top-5."""
        return JSONResponse(await classify_one(request, "file", timeout_s))

    @app.post("/", response_class=PlainTextResponse, tags=["classify"])
    async def classify_compat(request: Request) -> PlainTextResponse:
        """Workload-generator compatibility: field ``myfile`` in, top-1 short label out."""
        result = await classify_one(request, "myfile", settings.classify_timeout_s)
        if result["status"] != "done":
            raise WebError(
                422, "undecodable_image", result.get("error") or "the image could not be read"
            )
        return PlainTextResponse(protocol.short_label(result["predictions"][0]["label"]))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        media = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        suffix = name.rsplit(".", 1)[-1]
        if "/" in name or suffix not in media:
            raise WebError(404, "not_found", f"no static file {name!r}")
        try:
            text = _static_text(name)
        except FileNotFoundError:
            raise WebError(404, "not_found", f"no static file {name!r}") from None
        return Response(text, media_type=media[suffix], headers={"Cache-Control": "no-cache"})

    async def current_stats() -> dict[str, Any]:
        if stats_provider is not None:
            return await run_in_threadpool(stats_provider)
        qs = await run_in_threadpool(queue.stats)
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

    @app.get("/v1/stats", tags=["ops"])
    async def stats() -> dict[str, Any]:
        """Queue depth, workers desired/running/starting, and recent history."""
        return await current_stats()

    @app.get("/v1/stats/events", tags=["ops"])
    async def stats_events(
        request: Request, interval_s: float = Query(1.0, ge=0.2, le=60)
    ) -> StreamingResponse:
        """Server-Sent Events: a ``stats`` event (as ``GET /v1/stats``) every ``interval_s``."""

        async def stream() -> AsyncIterator[str]:
            while not await request.is_disconnected():
                yield _sse("stats", await current_stats())
                await asyncio.sleep(interval_s)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        """Prometheus exposition: queue, workers, images, latency histograms."""
        body, content_type = metrics.render(await current_stats())
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Storage and queue answer, replies are being read, and workers can start."""
        checks: dict[str, str] = {}
        try:
            await run_in_threadpool(storage.exists, "jobs/readyz-probe")
            checks["storage"] = "ok"
        except DlaasError as exc:
            checks["storage"] = str(exc)
        try:
            await run_in_threadpool(queue.stats)
            checks["queue"] = "ok"
        except DlaasError as exc:
            checks["queue"] = str(exc)
        checks["replies"] = "ok" if hub.alive else "reply reader is not running"
        if workers_readiness is not None:
            checks["workers"] = workers_readiness()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    return app


def _submit_one(
    service: JobService, job: PendingJob, filename: str, data: bytes, image_id: str, reply_to: str
) -> None:
    try:
        service.add(job, filename, data, image_id=image_id)
        # The caller gets the result in the response; the manifest waits for a timeout.
        service.commit(job, reply_to, manifest=False, inline_result=True)
    except BaseException:
        service.abort(job)
        raise


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _slug(status_code: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        status_code, f"http_{status_code}"
    )


def _static_text(name: str) -> str:
    return resources.files("dlaas.web").joinpath("static", name).read_text(encoding="utf-8")
