"""Every ``/v1/jobs`` route: upload many images as a job, list, read, stream, cancel, delete.

``POST /v1/jobs`` is built per app (``upload_router``): its schema names ``callback_url``
only where webhooks are on, so the schema describes what this service accepts.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from dlaas.errors import WebError
from dlaas.jobs import layout
from dlaas.jobs.messages import Finished, Progress
from dlaas.jobs.records import (
    AcceptedBody,
    AcceptedImage,
    JobManifest,
    ListingRecord,
    Rejection,
    ResultRecord,
    owner_of,
)
from dlaas.jobs.store import MAX_PAGE, JobStatus, JobStore, job_status
from dlaas.model.index import Target
from dlaas.web import source_jobs
from dlaas.web.context import Context, WebContext, owner
from dlaas.web.routes.docs import JOB_ID_SCHEMA, parameter_doc
from dlaas.web.routes.sse import EVENT_STREAM_DOC, EventStreamResponse, event_stream, sse
from dlaas.web.routes.submission import KEY_SCHEMA, Replay, Submission
from dlaas.web.uploads import multipart_doc

STREAM_POLL_S = 2.0  # fallback storage check for results delivered to another web process

router = APIRouter(tags=["jobs"])


async def _target(request: Request, ctx: WebContext) -> Target:
    """The model a job names in its ``model`` (and ``version``) form field or query
    parameter; the default model when it names none."""
    form = await request.form()  # parsed once already: Starlette keeps it
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str) and v}
    name = fields.get("model") or request.query_params.get("model")
    version = fields.get("version") or request.query_params.get("version")
    return ctx.models.resolve(name, version)


def manifest_or_404(jobs: JobStore, job_id: str, caller: str) -> JobManifest:
    """The caller's job; another owner's job is "not found" too."""
    if not layout.is_job_id(job_id):
        raise WebError(404, "job_not_found", f"{job_id!r} is not a job ID; IDs are 32 hex digits")
    manifest = jobs.manifest(job_id, caller)
    if manifest is None:
        raise WebError(404, "job_not_found", f"no job {job_id!r}; check the job_id")
    return manifest


CURSOR_DOC = "`next_cursor` of the previous page; leave out for the newest jobs"
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"description": "no such job (or another owner's)"}}


@router.get(
    "/v1/jobs",
    responses={400: {"description": "`cursor` is not a `next_cursor` this API returned"}},
    openapi_extra={"parameters": [parameter_doc("cursor", "query", JOB_ID_SCHEMA, CURSOR_DOC)]},
)
async def list_jobs(
    request: Request,
    ctx: Context,
    limit: int = Query(20, ge=1, le=MAX_PAGE, description="most jobs in this page"),
    cursor: str | None = Query(None, include_in_schema=False),  # documented above
) -> dict[str, Any]:
    """The caller's jobs, newest first: ID, created time, status and counts."""
    if cursor is not None and not layout.is_job_id(cursor):
        raise WebError(400, "bad_cursor", "cursor must be a next_cursor this API returned")
    caller = owner(request)

    def page() -> dict[str, Any]:
        manifests, next_cursor = ctx.jobs.page(caller, limit=limit, cursor=cursor)
        rows = []
        for manifest in manifests:
            if "source" in manifest:  # counts without reading a job's (many) results
                listing = ctx.jobs.listing(manifest["job_id"])
                status = ctx.jobs.source_status(manifest, listing)
            else:
                status = ctx.jobs.status(manifest)
            rows.append(
                {
                    "job_id": manifest["job_id"],
                    "created_at": manifest["created_at"],
                    "status": status.state,
                    "counts": status.counts,
                }
            )
        return {"jobs": rows, "next_cursor": next_cursor}

    return await run_in_threadpool(page)


async def create_job(
    request: Request,
    ctx: Context,
    partial: bool = Query(
        False,
        description="accept the valid files and list the refused ones in `rejected`, "
        "instead of refusing the whole job",
    ),
    callback_url: str | None = Query(None, include_in_schema=False),  # see upload_router
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", include_in_schema=False),
) -> JSONResponse:
    """Upload one or many images (multipart field ``files``) as one job; or, with a JSON
    body, classify the images in a bucket prefix or folder where they are (docs/api.md)."""
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        return await source_jobs.respond(request, ctx, callback_url, idempotency_key)
    ingest = ctx.ingest
    submit = await Submission.start(ctx, request, callback_url, idempotency_key)
    rejected: list[Rejection] = []
    try:
        uploads = await ctx.uploads.many_files(
            request, "files", max_files=ctx.settings.max_files_per_job
        )
        target = await _target(request, ctx)
        async with ingest.assembling(owner(request)) as job:
            for index, upload in enumerate(uploads):
                filename = upload.filename or "upload"
                try:
                    data = await ctx.uploads.read(upload)
                    submit.saw(filename, data)
                    await run_in_threadpool(ingest.add, job, filename, data)
                except WebError as exc:
                    if not partial:
                        raise
                    submit.saw(filename, None)
                    rejected.append(_rejection(index, filename, exc))
            if partial and not job.images:
                raise WebError(
                    422, "no_valid_files", "every file was refused", extra={"rejected": rejected}
                )
            images: list[AcceptedImage] = [
                {"image_id": i["image_id"], "filename": i["filename"]} for i in job.images
            ]
            body: AcceptedBody = {"job_id": job.job_id, "images": images}
            if partial:
                body["rejected"] = rejected
            await run_in_threadpool(submit.before_commit, job, body)
            await run_in_threadpool(
                functools.partial(ingest.commit, job, ctx.hub.name, progress=True, target=target)
            )
            await run_in_threadpool(submit.after_commit)
    except Replay as replay:  # a retry of an earlier request: its job, nothing enqueued
        return JSONResponse(replay.body, status_code=202)
    finally:
        await request.close()  # removes the spooled upload files
        await run_in_threadpool(submit.release)
    return JSONResponse(body, status_code=202)


def upload_router(*, webhooks_on: bool, max_files: int, sources_on: bool) -> APIRouter:
    """``POST /v1/jobs``, whose schema says what this service takes: non-empty files (at
    most ``max_files``), an ``Idempotency-Key`` of the accepted shape, ``callback_url``
    only where webhooks are on (elsewhere it is refused with 400 ``callback_refused``),
    and a JSON body naming stored images only where ``--source-allow`` turns that on."""
    doc = multipart_doc("files", many=True, max_files=max_files)
    if sources_on:
        doc["requestBody"]["content"].update(source_jobs.json_doc())
    parameters = [parameter_doc("Idempotency-Key", "header", KEY_SCHEMA, KEY_DOC)]
    if webhooks_on:
        parameters.append(parameter_doc("callback_url", "query", CALLBACK_SCHEMA, CALLBACK_DOC))
    doc["parameters"] = parameters
    upload = APIRouter(tags=["jobs"])
    upload.add_api_route(
        "/v1/jobs",
        create_job,
        methods=["POST"],
        status_code=202,
        openapi_extra=doc,
        responses=UPLOAD_REFUSALS,
    )
    return upload


KEY_DOC = "a retry with this key and the same files within 24 h gets the first 202"
CALLBACK_DOC = "POST a signed summary here once the job is finished (docs/api.md)"
CALLBACK_SCHEMA = {"type": "string", "format": "uri", "pattern": "^https?://"}
UPLOAD_REFUSALS: Responses = {
    400: {"description": "no file, an empty file, a malformed body, or a refused key or callback"},
    409: {"description": "the Idempotency-Key was used for other files, or is in use"},
    413: {"description": "a file or the body is too large"},
    415: {"description": "a file is not an image this service reads, or the body not multipart"},
    422: {"description": "an image over --max-pixels, corrupt or cut short"},
    429: {"description": "too many images wait; retry after `Retry-After` seconds"},
}


def _rejection(index: int, filename: str, exc: WebError) -> Rejection:
    return {
        "index": index,
        "filename": filename,
        "status": exc.status_code,
        "error": exc.error,
        "detail": exc.detail,
    }


@router.get("/v1/jobs/{job_id}", responses=NOT_FOUND)
async def get_job(
    job_id: str,
    request: Request,
    ctx: Context,
    results: bool = Query(True, description="include every result so far (false: counts only)"),
) -> dict[str, Any]:
    """Status counts and every result so far; works from any web process."""

    def read() -> dict[str, Any]:
        manifest = manifest_or_404(ctx.jobs, job_id, owner(request))
        listing = ctx.jobs.listing(job_id) if "source" in manifest else None
        if "source" in manifest and not results:  # counts only: no result record is read
            body = job_body(manifest, [], ctx.jobs.source_status(manifest, listing))
        else:
            found = ctx.jobs.results(job_id)
            body = job_body(manifest, found, ctx.jobs.status(manifest, found))
            if not results:
                body["results"] = []
        if "source" in manifest:
            body["source"] = manifest["source"]
            body["listing"] = _listing_view(listing)
        return body

    return await run_in_threadpool(read)


def _listing_view(record: ListingRecord | None) -> dict[str, Any] | None:
    """What a client sees of a job's listing: phase, keys listed, the output once written."""
    if record is None:
        return None
    view: dict[str, Any] = {
        "phase": record["phase"],
        "listed": record["count"],
        "error": record["error"],
        "cancelled": record["cancelled"],
    }
    if "output_url" in record:
        view["output_url"] = record["output_url"]
    return view


def job_body(
    manifest: JobManifest, results: list[ResultRecord], status: JobStatus
) -> dict[str, Any]:
    """``GET /v1/jobs/<id>``'s answer; each result named after its file."""
    names = {image["image_id"]: image["filename"] for image in manifest["images"]}
    for r in results:
        r["filename"] = names.get(r["image_id"], "")
    finished = [r["completed_at"] for r in results if r.get("completed_at")]
    end = max(finished) if status.finished and finished else time.time()
    return {
        "job_id": manifest["job_id"],
        "created_at": manifest["created_at"],
        "status": status.state,
        "counts": status.counts,
        "elapsed_s": round(end - manifest["created_at"], 3),
        "images": manifest["images"],
        "results": results,
    }


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=EventStreamResponse,
    responses={**EVENT_STREAM_DOC, **NOT_FOUND},
)
async def job_events(job_id: str, request: Request, ctx: Context) -> StreamingResponse:
    """Server-Sent Events: ``job``; ``classifying``, ``result`` per image; ``end``."""
    jobs, hub = ctx.jobs, ctx.hub
    manifest = await run_in_threadpool(manifest_or_404, jobs, job_id, owner(request))
    inbox = hub.subscribe(job_id)

    async def stream() -> AsyncIterator[str]:
        seen: dict[str, str] = {}  # image ID -> its result's status
        names = {i["image_id"]: i["filename"] for i in manifest["images"]}

        def emit(result: ResultRecord) -> str:
            seen[result["image_id"]] = result["status"]
            result["filename"] = names.get(result["image_id"], "")
            return sse("result", result)

        try:
            total, listing = await run_in_threadpool(jobs.extent, manifest)
            yield sse("job", {"job_id": job_id, "total": total, "images": manifest["images"]})
            for result in await run_in_threadpool(jobs.results, job_id):
                yield emit(result)
            while listing or len(seen) < total:
                if await request.is_disconnected():
                    return
                try:
                    reply = await asyncio.wait_for(inbox.get(), STREAM_POLL_S)
                except TimeoutError:
                    for result in await run_in_threadpool(jobs.results, job_id, seen):
                        yield emit(result)
                    if listing:  # a job over a source grows while it is listed
                        total, listing = await run_in_threadpool(jobs.extent, manifest)
                    yield ": keep-alive\n\n"
                    continue
                if reply.image_id in seen:
                    continue
                if isinstance(reply, Progress):
                    yield sse("classifying", {"image_id": reply.image_id})
                elif isinstance(reply, Finished):  # the record itself: no storage read
                    yield emit(reply.result.copy())
                else:
                    yield emit(await run_in_threadpool(jobs.result, job_id, reply.image_id))
            status = job_status(total, seen.values(), cancelled=False)
            yield sse("end", {"job_id": job_id, "status": status.state, **status.counts})
        finally:
            hub.unsubscribe(job_id, inbox)

    return event_stream(stream())


@router.post(
    "/v1/jobs/{job_id}/cancel",
    status_code=202,
    responses={
        **NOT_FOUND,
        409: {"description": "the job is complete: nothing to cancel"},
    },
)
async def cancel_job(job_id: str, request: Request, ctx: Context) -> JSONResponse:
    """Cancel a job: images not yet classified never are; results so far stay readable."""
    jobs = ctx.jobs

    def act() -> JSONResponse:
        manifest = manifest_or_404(jobs, job_id, owner(request))
        results = jobs.results(job_id)
        status = jobs.status(manifest, results)
        if status.state == "complete":
            raise WebError(
                409,
                "job_complete",
                f"job {job_id} is complete: nothing to cancel; DELETE /v1/jobs/{job_id}"
                "?purge=true removes it and its results",
            )
        if status.state == "running":
            jobs.cancel(job_id)
        total, listing = jobs.extent(manifest)
        statuses = (r["status"] for r in results)
        status = job_status(total, statuses, cancelled=True, listing=listing)
        return JSONResponse(
            {"job_id": job_id, "status": status.state, "counts": status.counts}, status_code=202
        )

    return await run_in_threadpool(act)


PURGE_SCHEMA = {"type": "boolean", "const": True}
PURGE_DOC = "`true`, required, so that an old client's DELETE meant as a cancel removes nothing"


@router.delete(
    "/v1/jobs/{job_id}",
    responses={
        200: {"description": "deleted: every object of the job is gone; `GET` answers 404"},
        400: {"description": "`purge=true` is missing: to cancel, POST /v1/jobs/{job_id}/cancel"},
        **NOT_FOUND,
    },
    openapi_extra={
        "parameters": [parameter_doc("purge", "query", PURGE_SCHEMA, PURGE_DOC, required=True)]
    },
)
async def delete_job(
    job_id: str,
    request: Request,
    ctx: Context,
    purge: bool = Query(False, include_in_schema=False),  # documented above
) -> JSONResponse:
    """Delete a job: cancel it and remove its inputs, results and manifest."""
    if not purge:
        raise WebError(
            400,
            "purge_required",
            f"DELETE removes a job and its results, and needs ?purge=true; to cancel job "
            f"{job_id} and keep its results, POST /v1/jobs/{job_id}/cancel",
        )
    jobs = ctx.jobs

    def act() -> JSONResponse:
        manifest = manifest_or_404(jobs, job_id, owner(request))
        jobs.cancel(job_id, purge=True, owner=owner_of(manifest))
        return JSONResponse({"job_id": job_id, "status": "purged"}, status_code=200)

    return await run_in_threadpool(act)
