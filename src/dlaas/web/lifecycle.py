"""Routes and hooks of the job lifecycle: list and cancel jobs, idempotent submits,
completion webhooks (the logic itself is in ``dlaas.lifecycle``).

``Lifecycle`` is built once per app (``app.state.lifecycle``); ``Submission`` carries one
``POST /v1/jobs`` through its ``Idempotency-Key`` and ``callback_url``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dlaas import protocol
from dlaas.errors import WebError
from dlaas.keys import ANONYMOUS
from dlaas.lifecycle.catalog import MAX_PAGE, JobCatalog
from dlaas.lifecycle.guard import WebhookRefused, check_callback
from dlaas.lifecycle.idempotency import (
    CLAIM_RETRY_AFTER_S,
    MAX_KEY_LENGTH,
    ClaimLost,
    FilesDigest,
    IdempotencyStore,
    record_key,
)
from dlaas.lifecycle.status import job_counts, owner_of
from dlaas.lifecycle.webhooks import (
    WebhookDispatcher,
    build_dispatcher,
    outbox_record,
    webhooks_allowed,
)
from dlaas.queue.base import Queue
from dlaas.settings import Settings
from dlaas.storage.base import Storage
from dlaas.web.context import context

log = logging.getLogger("dlaas.web")

router = APIRouter(tags=["jobs"])
_KEY = re.compile(rf"^[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}$")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Lifecycle:
    """The per-app parts: the catalog, the idempotency records and the webhook sender."""

    catalog: JobCatalog
    idempotency: IdempotencyStore
    allow_hosts: tuple[str, ...]
    dispatcher: WebhookDispatcher | None = None

    @classmethod
    def build(cls, settings: Settings, storage: Storage, queue: Queue) -> Lifecycle:
        return cls(
            catalog=JobCatalog(storage),
            idempotency=IdempotencyStore(storage, queue),
            allow_hosts=webhooks_allowed(settings),
            dispatcher=build_dispatcher(settings, storage),
        )


def lifecycle(request: Request) -> Lifecycle:
    return cast(Lifecycle, request.app.state.lifecycle)


def owner(request: Request) -> str:
    """The authenticated owner (the security layer sets it); ``anonymous`` without keys."""
    return str(getattr(request.state, "owner", ANONYMOUS) or ANONYMOUS)


class Replay(Exception):
    """Raised inside a job's assembly to drop it and answer with an earlier 202 body."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("idempotent replay")
        self.body = body


@dataclass
class Submission:
    """One ``POST /v1/jobs``: its owner, idempotency key, callback, and files seen."""

    lc: Lifecycle
    owner: str
    key: str | None
    callback: Any = None  # a checked guard.Target
    results_base: str = ""
    reply_to: str | None = None
    files: FilesDigest = field(default_factory=FilesDigest)
    record: dict[str, Any] | None = None  # ours, once the job is stored
    claim_id: str = ""  # our claim on the key, until it becomes ``record``
    earlier: dict[str, Any] | None = None  # the record of an earlier request with the key

    @classmethod
    async def start(
        cls, request: Request, callback_url: str | None, idempotency_key: str | None
    ) -> Submission:
        """Check the header and the callback, and claim the key, before any upload is
        read (a 4xx at once). The caller must ``release`` the submission in any case."""
        lc = lifecycle(request)
        if idempotency_key is not None and not _KEY.match(idempotency_key):
            raise WebError(
                400,
                "bad_idempotency_key",
                f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters "
                "without spaces; a UUID is a good choice",
            )
        target = None
        if callback_url is not None:
            try:
                target = await run_in_threadpool(check_callback, callback_url, lc.allow_hosts)
            except WebhookRefused as exc:
                raise WebError(400, "callback_refused", str(exc)) from None
        submit = cls(lc, owner(request), idempotency_key, target, str(request.base_url).rstrip("/"))
        if idempotency_key is not None:
            await run_in_threadpool(submit._claim)
        return submit

    def _claim(self) -> None:
        assert self.key is not None
        claim = self.lc.idempotency.claim(self.owner, self.key)
        if claim.outcome == "in_progress":
            raise _in_progress(self.key, claim.retry_after_s)
        self.claim_id, self.earlier = claim.claim_id, claim.record

    def release(self) -> None:
        """Give the key back if this request ends without having stored its job."""
        if self.key is not None and self.claim_id and self.record is None:
            self.lc.idempotency.release(self.owner, self.key, self.claim_id)

    def saw(self, filename: str, data: bytes | None) -> None:
        """Every file of the upload, in order (``None``: refused), for "the same files"."""
        self.files.add(filename, data)

    def before_commit(self, job: Any, body: dict[str, Any]) -> None:
        """Store what must survive a crash before the job is enqueued; raise ``Replay``
        for a retry of an earlier request, WebError 409 for a key reused on other files."""
        store = self.lc.idempotency
        if self.key is not None:
            earlier = self.earlier
            if earlier is not None:
                if earlier["files"] != self.files.hexdigest():
                    raise WebError(
                        409,
                        "idempotency_key_reused",
                        f"Idempotency-Key {self.key!r} was used for job {earlier['job_id']} "
                        "with different files; send a new key for a new job",
                        extra={"job_id": earlier["job_id"]},
                    )
                store.finish_enqueue(self.owner, self.key, earlier, reply_to=self.reply_to)
                raise Replay(earlier["body"])
        index = self.lc.catalog.remember_owner(self.owner, job.job_id)
        if index is not None:
            job.stored_keys.append(index)
        if self.callback is not None:
            results_url = f"{self.results_base}/v1/jobs/{job.job_id}"
            key = protocol.webhook_key(job.job_id)
            store.storage.put_json(
                key, outbox_record(job.job_id, self.callback, results_url, self.owner)
            )
            job.stored_keys.append(key)
        if self.key is not None:
            try:
                self.record = store.save(
                    self.owner,
                    self.key,
                    self.claim_id,
                    job_id=job.job_id,
                    files=self.files.hexdigest(),
                    body=body,
                )
            except ClaimLost:
                self.claim_id = ""  # not ours to release any more
                raise _in_progress(self.key, CLAIM_RETRY_AFTER_S) from None
            job.stored_keys.append(record_key(self.owner, self.key))

    def after_commit(self) -> None:
        if self.key is not None and self.record is not None:
            self.lc.idempotency.mark_enqueued(self.owner, self.key, self.record)


def _in_progress(key: str, retry_after_s: float) -> WebError:
    return WebError(
        409,
        "idempotency_request_in_progress",
        f"a request with Idempotency-Key {key!r} is still in progress; retry after "
        f"{retry_after_s:g} s to get its answer",
        headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )


@router.get("/v1/jobs")
async def list_jobs(
    request: Request,
    limit: int = Query(20, ge=1, le=MAX_PAGE, description="most jobs in this page"),
    cursor: str | None = Query(
        None, description="`next_cursor` of the previous page; leave out for the newest jobs"
    ),
) -> dict[str, Any]:
    """The caller's jobs, newest first: ID, created time, status and counts."""
    if cursor is not None and not _JOB_ID.match(cursor):
        raise WebError(400, "bad_cursor", "cursor must be a next_cursor this API returned")
    ctx = context(request)
    catalog = lifecycle(request).catalog

    def page() -> dict[str, Any]:
        manifests, next_cursor = catalog.page(owner(request), limit=limit, cursor=cursor)
        rows = []
        for manifest in manifests:
            job_id = manifest["job_id"]
            results = ctx.service.results(job_id)
            state, counts = job_counts(
                len(manifest["images"]),
                (r["status"] for r in results),
                cancelled=ctx.storage.exists(protocol.cancel_key(job_id)),
            )
            rows.append(
                {
                    "job_id": job_id,
                    "created_at": manifest["created_at"],
                    "status": state,
                    "counts": counts,
                }
            )
        return {"jobs": rows, "next_cursor": next_cursor}

    return await run_in_threadpool(page)


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=202,
    responses={
        200: {"description": "purged: every object of the job is gone"},
        404: {"description": "no such job (or another owner's)"},
        409: {"description": "the job is complete: nothing to cancel"},
    },
)
async def cancel_job(
    job_id: str,
    request: Request,
    purge: bool = Query(False, description="also delete the job's inputs, results and manifest"),
) -> JSONResponse:
    """Cancel a job: images not yet classified never are; results so far stay readable."""
    ctx = context(request)
    catalog = lifecycle(request).catalog
    caller = owner(request)

    def act() -> JSONResponse:
        manifest = catalog.manifest(job_id) if _JOB_ID.match(job_id) else None
        if manifest is None or (caller != ANONYMOUS and owner_of(manifest) != caller):
            raise WebError(404, "job_not_found", f"no job {job_id!r}; check the job_id")
        if purge:
            catalog.cancel(job_id, purge=True)
            catalog.remove(job_id, keep_marker=True, owner=owner_of(manifest))
            return JSONResponse({"job_id": job_id, "status": "purged"}, status_code=200)
        results = ctx.service.results(job_id)
        already = ctx.storage.exists(protocol.cancel_key(job_id))
        state, _ = job_counts(
            len(manifest["images"]), (r["status"] for r in results), cancelled=already
        )
        if state == "complete":
            raise WebError(
                409,
                "job_complete",
                f"job {job_id} is complete: nothing to cancel; DELETE with ?purge=true "
                "removes it and its results",
            )
        if not already:
            catalog.cancel(job_id)
        state, counts = job_counts(
            len(manifest["images"]), (r["status"] for r in results), cancelled=True
        )
        return JSONResponse({"job_id": job_id, "status": state, "counts": counts}, status_code=202)

    return await run_in_threadpool(act)
