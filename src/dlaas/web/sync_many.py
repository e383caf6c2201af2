"""A synchronous call of N images: N queue messages of one job, answered together.

The same path as ``JobService.classify`` for one image: validate and store every image,
one ``send_batch``, results inside the replies. On timeout the results already in hand
are stored and the manifest written, so the 504 can send the caller to
``GET /v1/jobs/<id>`` for the whole job; the rest are stored by the reply reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool

from dlaas import protocol
from dlaas.errors import WebError
from dlaas.web.ingest import JobService, PendingJob
from dlaas.web.replies import ReplyHub


async def classify_many(
    service: JobService,
    hub: ReplyHub,
    images: Sequence[tuple[str, bytes]],
    timeout_s: float,
    *,
    owner: str,
    probabilities: bool = False,
) -> list[protocol.ResultRecord]:
    """The result record of each image, in order; WebError for a refusal or a timeout."""
    job = PendingJob(owner=owner)
    image_ids = [protocol.new_id() for _ in images]
    futures = [hub.expect(image_id) for image_id in image_ids]
    try:
        await run_in_threadpool(_submit, service, job, images, image_ids, hub.name, probabilities)
        done, pending = await asyncio.wait(futures, timeout=timeout_s)
    except BaseException:
        for image_id in image_ids:
            hub.forget(image_id)
        raise
    if pending:
        for image_id in image_ids:
            hub.forget(image_id)
        replies = [f.result() for f in done]
        await run_in_threadpool(_keep_for_polling, service, job, replies)
        raise WebError(
            504,
            "timeout",
            f"{len(pending)} of {len(images)} images had no result within {timeout_s:g} s; "
            f"they are queued, poll GET /v1/jobs/{job.job_id} for them",
            extra={"job_id": job.job_id},
        )
    records = []
    for future in futures:
        reply = future.result()
        if reply.result is not None:
            records.append(reply.result.copy())
        else:  # the reply could not carry it: the worker stored it instead
            records.append(await run_in_threadpool(service.result, reply.job_id, reply.image_id))
    return records


def _submit(
    service: JobService,
    job: PendingJob,
    images: Sequence[tuple[str, bytes]],
    image_ids: list[str],
    reply_to: str,
    probabilities: bool,
) -> None:
    try:
        for (filename, data), image_id in zip(images, image_ids, strict=True):
            service.add(job, filename, data, image_id=image_id)
        service.commit(
            job, reply_to, manifest=False, inline_result=True, probabilities=probabilities
        )
    except BaseException:
        service.abort(job)
        raise


def _keep_for_polling(service: JobService, job: PendingJob, replies: list[protocol.Reply]) -> None:
    """Store the results this call already took off the reply queue, then the manifest."""
    for reply in replies:
        if reply.result is not None:
            service.storage.put_json(reply.result_key, reply.result)
    service.write_manifest(job)
