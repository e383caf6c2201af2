"""One ``POST /v1/jobs`` through its ``Idempotency-Key`` and ``callback_url``.

``Submission`` checks both and claims the key before any upload is read (a 4xx or a
409 at once), records every file it sees, and before the commit stores what must survive
a crash: the owner index, the webhook outbox record, the idempotency record. A retry of
an earlier request is answered with that request's 202 body (``Replay``) and enqueues
nothing new; a request that ends without storing its job releases its claim.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from dlaas.errors import WebError
from dlaas.jobs import layout
from dlaas.jobs.idempotency import CLAIM_RETRY_AFTER_S, MAX_KEY_LENGTH, ClaimLost, FilesDigest
from dlaas.jobs.records import AcceptedBody, IdempotencyRecord, WebhookOutbox
from dlaas.jobs.store import PendingJob
from dlaas.lifecycle.guard import Target, WebhookRefused, check_callback
from dlaas.web.context import WebContext, owner

KEY_PATTERN = rf"^[!-~]{{1,{MAX_KEY_LENGTH}}}$"  # printable ASCII, no spaces
KEY_SCHEMA = {"type": "string", "pattern": KEY_PATTERN}
_KEY = re.compile(KEY_PATTERN)


class Replay(Exception):
    """Raised inside a job's assembly to drop it and answer with an earlier 202 body."""

    def __init__(self, body: AcceptedBody) -> None:
        super().__init__("idempotent replay")
        self.body = body


@dataclass
class Submission:
    """One ``POST /v1/jobs``: its owner, idempotency key, callback, and files seen."""

    ctx: WebContext
    owner: str
    key: str | None
    callback: Target | None = None
    results_base: str = ""
    files: FilesDigest = field(default_factory=FilesDigest)
    record: IdempotencyRecord | None = None  # ours, once the job is stored
    claim_id: str = ""  # our claim on the key, until it becomes ``record``
    earlier: IdempotencyRecord | None = None  # the record of an earlier request with the key

    @classmethod
    async def start(
        cls,
        ctx: WebContext,
        request: Request,
        callback_url: str | None,
        idempotency_key: str | None,
    ) -> Submission:
        """Check the header and the callback, and claim the key, before any upload is
        read (a 4xx at once). The caller must ``release`` the submission in any case."""
        if idempotency_key is not None and not _KEY.fullmatch(idempotency_key):
            raise WebError(
                400,
                "bad_idempotency_key",
                f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters "
                "without spaces; a UUID is a good choice",
            )
        target = None
        if callback_url is not None:
            try:
                target = await run_in_threadpool(check_callback, callback_url, ctx.allow_hosts)
            except WebhookRefused as exc:
                raise WebError(400, "callback_refused", str(exc)) from None
        base = str(request.base_url).rstrip("/")
        submit = cls(ctx, owner(request), idempotency_key, target, base)
        if idempotency_key is not None:
            await run_in_threadpool(submit._claim)
        return submit

    def _claim(self) -> None:
        assert self.key is not None
        claim = self.ctx.idempotency.claim(self.owner, self.key)
        if claim.outcome == "in_progress":
            raise _in_progress(self.key, claim.retry_after_s)
        self.claim_id, self.earlier = claim.claim_id, claim.record

    def release(self) -> None:
        """Give the key back if this request ends without having stored its job."""
        if self.key is not None and self.claim_id and self.record is None:
            self.ctx.idempotency.release(self.owner, self.key, self.claim_id)

    def saw(self, filename: str, data: bytes | None) -> None:
        """Every file of the upload, in order (``None``: refused), for "the same files"."""
        self.files.add(filename, data)

    def before_commit(self, job: PendingJob, body: AcceptedBody) -> None:
        """Store what must survive a crash before the job is enqueued; raise ``Replay``
        for a retry of an earlier request, WebError 409 for a key reused on other files."""
        store = self.ctx.idempotency
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
                store.finish_enqueue(self.owner, self.key, earlier, reply_to=None)
                raise Replay(earlier["body"])
        self.ctx.jobs.remember_owner(job)
        if self.callback is not None:
            outbox = _outbox(job, self.callback, f"{self.results_base}/v1/jobs/{job.job_id}")
            self.ctx.jobs.put_record(job, layout.webhook_key(job.job_id), outbox)
        if self.key is not None:
            try:
                self.record = store.save(
                    job, self.key, self.claim_id, files=self.files.hexdigest(), body=body
                )
            except ClaimLost:
                self.claim_id = ""  # not ours to release any more
                raise _in_progress(self.key, CLAIM_RETRY_AFTER_S) from None

    def after_commit(self) -> None:
        if self.key is not None and self.record is not None:
            self.ctx.idempotency.mark_enqueued(self.owner, self.key, self.record)


def _in_progress(key: str, retry_after_s: float) -> WebError:
    return WebError(
        409,
        "idempotency_request_in_progress",
        f"a request with Idempotency-Key {key!r} is still in progress; retry after "
        f"{retry_after_s:g} s to get its answer",
        headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )


def _outbox(job: PendingJob, target: Target, results_url: str) -> WebhookOutbox:
    return {
        "job_id": job.job_id,
        "url": target.url,
        "results_url": results_url,
        "event_id": uuid.uuid4().hex,
        "owner": job.owner,
        "created_at": time.time(),
        "attempts": 0,
        "next_attempt_at": 0.0,
        "lease_until": 0.0,
        "state": "pending",
    }
