"""Routes of asynchronous jobs: upload many images, then poll or stream the results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from dlaas import protocol
from dlaas.errors import WebError
from dlaas.lifecycle.status import job_counts
from dlaas.web.context import context
from dlaas.web.lifecycle import Replay, Submission
from dlaas.web.sse import EVENT_STREAM_DOC, EventStreamResponse, event_stream, sse
from dlaas.web.uploads import multipart_doc

STREAM_POLL_S = 2.0  # fallback storage check for results delivered to another web process

router = APIRouter(tags=["jobs"])


@router.post("/v1/jobs", status_code=202, openapi_extra=multipart_doc("files", many=True))
async def create_job(
    request: Request,
    partial: bool = Query(
        False,
        description="accept the valid files and list the refused ones in `rejected`, "
        "instead of refusing the whole job",
    ),
    callback_url: str | None = Query(
        None, description="POST a signed summary here once the job is finished (docs/api.md)"
    ),
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        description="a retry with this key and the same files within 24 h gets the first 202",
    ),
) -> JSONResponse:
    """Upload one or many images (multipart field ``files``) as one job."""
    ctx = context(request)
    service = ctx.service
    submit = await Submission.start(request, callback_url, idempotency_key)
    rejected: list[dict[str, Any]] = []
    try:
        uploads = await ctx.uploads.many_files(
            request, "files", max_files=ctx.settings.max_files_per_job
        )
        async with service.assembling(request.state.owner) as job:
            for index, upload in enumerate(uploads):
                try:
                    data = await ctx.uploads.read(upload)
                    submit.saw(upload.filename or "upload", data)
                    await run_in_threadpool(service.add, job, upload.filename or "upload", data)
                except WebError as exc:
                    if not partial:
                        raise
                    submit.saw(upload.filename or "upload", None)
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
            images = [{"image_id": i["image_id"], "filename": i["filename"]} for i in job.images]
            body: dict[str, Any] = {"job_id": job.job_id, "images": images}
            if partial:
                body["rejected"] = rejected
            await run_in_threadpool(submit.before_commit, job, body)
            await run_in_threadpool(service.commit, job, ctx.hub.name, progress=True)
            await run_in_threadpool(submit.after_commit)
    except Replay as replay:  # a retry of an earlier request: its job, nothing enqueued
        return JSONResponse(replay.body, status_code=202)
    finally:
        await request.close()  # removes the spooled upload files
        await run_in_threadpool(submit.release)
    return JSONResponse(body, status_code=202)


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    """Status counts and every result so far; works from any web process."""
    return await run_in_threadpool(context(request).service.status, job_id, request.state.owner)


@router.get(
    "/v1/jobs/{job_id}/events", response_class=EventStreamResponse, responses=EVENT_STREAM_DOC
)
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events: ``job``; ``classifying``, ``result`` per image; ``end``."""
    ctx = context(request)
    service, hub = ctx.service, ctx.hub
    manifest = await run_in_threadpool(service.manifest, job_id, request.state.owner)
    inbox = hub.subscribe(job_id)

    async def stream() -> AsyncIterator[str]:
        total = len(manifest["images"])
        seen: dict[str, str] = {}  # image ID -> its result's status
        names = {i["image_id"]: i["filename"] for i in manifest["images"]}

        def emit(result: protocol.ResultRecord) -> str:
            seen[result["image_id"]] = result["status"]
            result["filename"] = names.get(result["image_id"], "")
            return sse("result", result)

        try:
            yield sse("job", {"job_id": job_id, "total": total, "images": manifest["images"]})
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
                    yield sse("classifying", {"image_id": reply.image_id})
                    continue
                result = await run_in_threadpool(service.result, job_id, reply.image_id)
                yield emit(result)
            status, counts = job_counts(total, seen.values(), cancelled=False)
            yield sse("end", {"job_id": job_id, "status": status, **counts})
        finally:
            hub.unsubscribe(job_id, inbox)

    return event_stream(stream())
