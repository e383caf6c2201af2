"""``POST /v1/jobs`` with a JSON body: a job over images that stay in a bucket or folder.

The web tier checks the request (allowed roots, the source answers and is not empty),
stores the job's manifest and listing record, and answers 202 at once; ``SourceJobs``
lists the source in the background and workers read each image from it. No byte of an
image passes through here.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from dlaas.errors import ConfigError, DlaasError, ObjectNotFound, WebError
from dlaas.jobs import layout
from dlaas.jobs.listing import OpenFolder, SourceJobs
from dlaas.jobs.records import AcceptedBody, JobSource
from dlaas.jobs.sources import AllowedRoot, SourceRefused, check_allowed, parse_allowed
from dlaas.jobs.store import JobStore, PendingJob
from dlaas.queue.base import Queue
from dlaas.settings import Settings
from dlaas.storage import Storage, open_source, open_storage
from dlaas.web.context import WebContext
from dlaas.web.routes.submission import Replay, Submission

MAX_BODY_BYTES = 64 * 1024


class SourceJobRequest(BaseModel):
    """The JSON body of a job over stored images (docs/api.md)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(None, description="s3://bucket/prefix/ or file:///dir/")
    manifest: str | None = Field(
        None, description="instead of source: a file of keys, one a line, relative to its folder"
    )
    output: str = Field(description="folder for the job's JSON Lines file: s3://... or file://")
    model: str | None = Field(
        None, description="a served model's name (GET /v1/models); the default model when left out"
    )
    webhook: str | None = Field(None, description="POST a signed summary here once finished")

    @model_validator(mode="after")
    def _one_source(self) -> SourceJobRequest:
        if (self.source is None) == (self.manifest is None):
            raise ValueError("give exactly one of source (a folder) and manifest (a key list)")
        return self

    @property
    def kind(self) -> Literal["prefix", "manifest"]:
        return "prefix" if self.source is not None else "manifest"


def build_source_jobs(
    settings: Settings,
    jobs: JobStore,
    reply_to: str,
    accepted: Callable[[int, str | None], None],
    route: Callable[[str | None], Queue] | None = None,
) -> tuple[tuple[AllowedRoot, ...], SourceJobs | None]:
    """The allowed roots and the runner of jobs over stored images; none without roots."""
    try:
        roots = parse_allowed(settings.source_allow)
    except ValueError as exc:
        raise ConfigError(f"--source-allow / DLAAS_SOURCE_ALLOW: {exc}") from None
    if not roots:
        return roots, None
    clients: dict[str, Any] = {}  # one S3 client for every folder: each costs ~0.5 s

    def open_folder(url: str, read_only: bool) -> Storage:
        options = settings.store_options(url)
        if options:  # s3://
            if "s3" not in clients:
                from dlaas.aws.clients import make_client  # boto3: only for s3:// folders

                clients["s3"] = make_client(
                    "s3",
                    region=options["region"],
                    endpoint_url=options["endpoint_url"],
                    max_pool_connections=32,
                    s3_addressing_style=options["addressing_style"],
                )
            options["client"] = clients["s3"]
        return open_source(url, **options) if read_only else open_storage(url, **options)

    runner = SourceJobs(
        jobs,
        open_folder,
        holder=f"{socket.gethostname()}-{os.getpid()}-{reply_to[-6:]}",
        reply_to=reply_to,
        max_backlog=settings.max_backlog,
        on_enqueued=accepted,
        page_keys=settings.source_page_keys,
        route=route,
    )
    return roots, runner


def json_doc() -> dict[str, Any]:
    """The JSON alternative of ``POST /v1/jobs``'s request body, for the OpenAPI schema."""
    return {"application/json": {"schema": SourceJobRequest.model_json_schema()}}


async def read_request(request: Request) -> SourceJobRequest:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise WebError(413, "body_too_large", f"a JSON job body is at most {MAX_BODY_BYTES} bytes")
    try:
        return SourceJobRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        detail = f"{where}: {first['msg'].removeprefix('Value error, ')}"
        raise WebError(400, "bad_job_body", f"{detail}; see docs/api.md") from None


def checked_source(ctx: WebContext, wanted: SourceJobRequest, owner: str) -> JobSource:
    """The job's source and output, normalized, if allowed and answering; else a 4xx."""
    target = ctx.models.resolve(wanted.model)  # 404 model_not_found for an unknown one
    folder = wanted.kind == "prefix"
    url = wanted.source if folder else wanted.manifest
    assert url is not None
    try:
        source: JobSource = {
            "url": check_allowed(url, ctx.source_roots, owner, folder=folder),
            "kind": wanted.kind,
            "output": check_allowed(wanted.output, ctx.source_roots, owner, folder=True),
        }
    except SourceRefused as exc:
        raise WebError(403 if ctx.source_roots else 400, "source_refused", str(exc)) from None
    assert ctx.source_jobs is not None
    _check_answers(ctx.source_jobs.open_folder, source)
    source["model"] = target.model  # the version is pinned at submission, as an upload's
    if target.version is not None:
        source["version"] = target.version
    return source


def _check_answers(open_folder: OpenFolder, source: JobSource) -> None:
    """The source exists and holds at least one key; the output folder opens."""
    url = source["url"]
    try:
        if source["kind"] == "prefix":
            if not open_folder(url, True).list_page(limit=1):
                raise WebError(
                    422, "source_empty", f"{url} holds no objects; check the prefix (it is a "
                    "folder: it ends with /)",
                )  # fmt: skip
        else:
            folder, name = url.rsplit("/", 1)
            if not open_folder(folder + "/", True).get(name).strip():
                raise WebError(422, "source_empty", f"the manifest {url} lists no keys")
        open_folder(source["output"], False)
    except (ObjectNotFound, ConfigError) as exc:
        raise WebError(404, "source_not_found", f"{exc}") from None
    except WebError:
        raise
    except DlaasError as exc:
        raise WebError(502, "source_unreachable", f"cannot read {url}: {exc}") from None


def check_on(ctx: WebContext) -> None:
    if ctx.source_jobs is None or not ctx.source_roots:
        raise WebError(
            400,
            "sources_off",
            "jobs over stored images are off on this service; the operator turns them on "
            "with --source-allow (DLAAS_SOURCE_ALLOW), e.g. s3://bucket/photos/,file:///data/",
        )


async def create(ctx: WebContext, wanted: SourceJobRequest, submit: Submission) -> AcceptedBody:
    """Check, store and start a job over a source; its 202 body."""
    runner = ctx.source_jobs
    assert runner is not None
    owner = submit.owner
    source = await run_in_threadpool(checked_source, ctx, wanted, owner)
    submit.saw("source-job", json.dumps(source, sort_keys=True).encode())
    job = PendingJob(owner=owner)
    body: AcceptedBody = {"job_id": job.job_id, "images": [], "source": source}

    def store() -> None:
        try:
            submit.before_commit(job, body)
            manifest = job.manifest()
            manifest["source"] = source
            ctx.jobs.put_record(job, layout.manifest_key(job.job_id), manifest)
            runner.begin(job.job_id)
        except BaseException:
            ctx.jobs.abort(job)
            raise
        submit.after_commit()

    await run_in_threadpool(store)
    return body


async def respond(
    request: Request, ctx: WebContext, callback_url: str | None, idempotency_key: str | None
) -> JSONResponse:
    """``POST /v1/jobs`` with a JSON body: check, store and start the job; its 202."""
    check_on(ctx)
    wanted = await read_request(request)
    callback = wanted.webhook or callback_url
    submit = await Submission.start(ctx, request, callback, idempotency_key)
    try:
        body = await create(ctx, wanted, submit)
    except Replay as replay:
        return JSONResponse(replay.body, status_code=202)
    finally:
        await run_in_threadpool(submit.release)
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{body['job_id']}"})
