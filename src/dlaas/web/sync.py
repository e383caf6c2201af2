"""A synchronous call of 1..N images: N queue messages of one job, answered together.

Every image is checked and stored, one ``send_batch`` enqueues them, and each result
comes back inside its reply, so nothing is read from storage. When the caller's
``timeout_s`` runs out the images are still queued: the results already in hand are
handed to the reply hub to store, the manifest is written, and the caller is answered
``202`` with the job to poll (``StillQueued``), never a 5xx (docs/api.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from dlaas.jobs import layout
from dlaas.jobs.messages import Finished
from dlaas.jobs.records import ResultRecord
from dlaas.jobs.store import PendingJob
from dlaas.model.index import Target
from dlaas.web.ingest import Ingest, SyncCall
from dlaas.web.replies import ReplyHub


@dataclass(frozen=True)
class StillQueued:
    """The call's ``timeout_s`` ran out; its images are queued as job ``job_id``."""

    job_id: str
    waiting: int  # images without a result yet
    total: int
    timeout_s: float

    @property
    def detail(self) -> str:
        return (
            f"{self.waiting} of {self.total} images had no result within {self.timeout_s:g} s; "
            f"they are queued, poll GET /v1/jobs/{self.job_id} for them"
        )


async def classify(
    ingest: Ingest,
    hub: ReplyHub,
    images: Sequence[tuple[str, bytes]],
    timeout_s: float,
    *,
    owner: str,
    probabilities: bool = False,
    started_at: float | None = None,
    target: Target | None = None,
) -> list[ResultRecord] | StillQueued:
    """Each image's result record, in order, with its filename and the web tier's hops
    (``started_at``: when the request arrived); ``StillQueued`` on timeout."""
    started_at = time.time() if started_at is None else started_at
    job = PendingJob(owner=owner, one_image=len(images) == 1)
    image_ids = [layout.new_id() for _ in images]
    futures = [hub.expect(image_id) for image_id in image_ids]
    try:
        await ingest.submit(SyncCall(job, images, image_ids, hub.name, probabilities, target))
        done, pending = await asyncio.wait(futures, timeout=timeout_s)
    except BaseException:
        for image_id in image_ids:
            hub.forget(image_id)
        raise
    replied_at = time.time()
    if pending:
        for image_id in image_ids:
            hub.forget(image_id)
        await run_in_threadpool(_keep_for_polling, ingest, hub, job, [f.result() for f in done])
        return StillQueued(job.job_id, len(pending), len(images), timeout_s)
    records = []
    for future, entry in zip(futures, job.images, strict=True):
        record = future.result().result.copy()
        record["filename"] = entry["filename"]
        record["timings_ms"] = _with_web_hops(record, started_at, replied_at)
        records.append(record)
    return records


def _keep_for_polling(ingest: Ingest, hub: ReplyHub, job: PendingJob, done: list[Finished]) -> None:
    """Store the results this call already took off the reply queue, then the manifest."""
    hub.store_unclaimed(done)
    ingest.jobs.write_manifest(job)


def _with_web_hops(record: ResultRecord, started_at: float, replied_at: float) -> dict[str, float]:
    """The worker's timings plus the web tier's hops, so one result shows the whole trip.

    ``web_in``: request to enqueue; ``queue_wait`` and ``worker`` come from the worker;
    ``reply``: result sent to the waiting request woken; ``web_out``: woken to answer;
    ``web_total``: request to answer. The hops are epoch-clock differences across
    processes, so they add up only on one machine.
    """
    now = time.time()
    timings = dict(record.get("timings_ms") or {})
    enqueued_at, completed_at = record.get("enqueued_at"), record.get("completed_at")
    if enqueued_at:
        timings["web_in"] = round((enqueued_at - started_at) * 1000, 3)
    if completed_at:
        timings["reply"] = round((replied_at - completed_at) * 1000, 3)
    timings["web_out"] = round((now - replied_at) * 1000, 3)
    timings["web_total"] = round((now - started_at) * 1000, 3)
    return timings
