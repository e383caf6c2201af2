"""Accepting a job: validate, store every image, write the manifest, then enqueue.

A job is visible to workers only after all of it is stored, and the enqueue is one
``send_batch``, so a client that gets 202 has a whole job and one that gets an error
has none: a failure part-way removes what was already stored.

``JobService`` owns that lifecycle for every route: new IDs, the abort on failure, and for
a synchronous call the manifest written only on timeout (so its caller can poll).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from dlaas import protocol
from dlaas.errors import DlaasError, ObjectNotFound, WebError
from dlaas.keys import ANONYMOUS
from dlaas.lifecycle.status import is_finished, job_counts
from dlaas.queue.base import Queue
from dlaas.storage.base import Storage
from dlaas.web.replies import ReplyHub
from dlaas.web.tenancy import OwnerBacklog
from dlaas.web.validate import check_image

log = logging.getLogger("dlaas.web")

RESULT_CACHE_SIZE = 20_000  # records (about 1 kB each)


@dataclass
class PendingJob:
    """A job being assembled one file at a time, so only one image is in memory."""

    job_id: str = field(default_factory=protocol.new_job_id)
    images: list[protocol.ImageEntry] = field(default_factory=list)
    stored_keys: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    owner: str = ANONYMOUS  # the API key's owner; only they can read the job


class JobService:
    def __init__(
        self,
        storage: Storage,
        queue: Queue,
        *,
        max_bytes: int,
        max_pixels: int,
        on_accepted: Callable[[int], None] | None = None,
        owner_backlog: OwnerBacklog | None = None,
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.on_accepted = on_accepted
        self.owner_backlog = owner_backlog
        # One image into a local directory and a sqlite queue costs less than the hop to a
        # worker thread and back (two thread wake-ups under the GIL), so the synchronous
        # call submits it on the event loop; any network backend keeps the thread.
        self.inline_submit = storage.local_io and queue.local_io
        # Result records never change once written, so polling a big job reads each
        # from storage once, not on every GET.
        self._results: OrderedDict[str, protocol.ResultRecord] = OrderedDict()
        self._results_lock = threading.Lock()

    def add(
        self, job: PendingJob, filename: str, data: bytes, image_id: str | None = None
    ) -> protocol.ImageEntry:
        """Validate and store one image of ``job``; raises WebError naming the file."""
        try:
            info = check_image(data, filename, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        except WebError as exc:
            exc.detail = f"{exc.detail} (file {len(job.images) + 1} of the upload)"
            raise
        image_id = image_id or protocol.new_id()
        key = protocol.input_key(job.job_id, image_id)
        self.storage.put(key, data)
        job.stored_keys.append(key)
        image: protocol.ImageEntry = {
            "image_id": image_id,
            "filename": _display_name(filename),
            "format": info.format,
            "width": info.width,
            "height": info.height,
            "size_bytes": info.size_bytes,
        }
        job.images.append(image)
        return image

    def commit(
        self,
        job: PendingJob,
        reply_to: str | None,
        *,
        progress: bool = False,
        manifest: bool = True,
        inline_result: bool = False,
        probabilities: bool = False,
    ) -> protocol.JobManifest:
        """Write the manifest and enqueue every image in one batch.

        ``progress`` asks workers for a "classifying" notice too (job streams show it;
        a synchronous request has no use for it). ``manifest=False`` leaves the manifest
        to ``write_manifest``: a synchronous call answers with the result itself, and
        writes the manifest only if it has to send its caller to ``GET /v1/jobs/<id>``.
        ``inline_result`` has the worker send the result inside the reply, for the same reason.
        ``probabilities`` asks for every class's score as well (``/v2``'s FP32 output).
        """
        if not job.images:
            raise WebError(400, "no_files", "the upload holds no files; send one or more images")
        record = self.write_manifest(job) if manifest else self.manifest_of(job)
        now = time.time()
        tasks = [
            protocol.Task(
                job_id=job.job_id,
                image_id=image["image_id"],
                key=protocol.input_key(job.job_id, image["image_id"]),
                reply_to=reply_to,
                enqueued_at=now,
                progress=progress,
                inline_result=inline_result,
                probabilities=probabilities,
            ).to_json()
            for image in job.images
        ]
        self.queue.send_batch(tasks)
        if self.owner_backlog is not None:
            self.owner_backlog.accepted(job.owner, (image["image_id"] for image in job.images))
        for image in job.images:
            log.info("image_accepted", extra={"job_id": job.job_id, "image_id": image["image_id"]})
        if self.on_accepted:
            self.on_accepted(len(job.images))
        return record

    def manifest_of(self, job: PendingJob) -> protocol.JobManifest:
        return {
            "job_id": job.job_id,
            "created_at": job.created_at,
            "images": job.images,
            "owner": job.owner,
        }

    def write_manifest(self, job: PendingJob) -> protocol.JobManifest:
        """Make the job visible at ``GET /v1/jobs/<id>``; return the manifest."""
        record = self.manifest_of(job)
        key = protocol.manifest_key(job.job_id)
        self.storage.put_json(key, record)
        job.stored_keys.append(key)
        return record

    @asynccontextmanager
    async def assembling(self, owner: str = ANONYMOUS) -> AsyncIterator[PendingJob]:
        """A new job to ``add`` to and ``commit``; if the block raises, it is aborted."""
        job = PendingJob(owner=owner)
        try:
            yield job
        except BaseException:
            await run_in_threadpool(self.abort, job)
            raise

    async def classify(
        self,
        hub: ReplyHub,
        filename: str,
        data: bytes,
        timeout_s: float,
        started_at: float | None = None,
        *,
        owner: str = ANONYMOUS,
    ) -> protocol.ResultRecord:
        """Enqueue one image as a job of its own and wait for its result.

        The result comes inside the reply, so nothing is read from storage. On timeout
        the manifest is written and a 504 sends the caller to ``GET /v1/jobs/<id>``.
        ``started_at`` (epoch s) is when the request arrived, for the result's hop timings.
        """
        started_at = time.time() if started_at is None else started_at
        job = PendingJob(owner=owner)
        image_id = protocol.new_id()
        future = hub.expect(image_id)
        try:
            if self.inline_submit:  # a few hundred microseconds of local syscalls
                self._submit_one(job, filename, data, image_id, hub.name)
            else:
                await run_in_threadpool(self._submit_one, job, filename, data, image_id, hub.name)
        except BaseException:
            hub.forget(image_id)
            raise
        try:
            reply = await asyncio.wait_for(future, timeout_s)
            replied_at = time.time()
        except TimeoutError:
            hub.forget(image_id)
            await run_in_threadpool(self.write_manifest, job)
            raise WebError(
                504,
                "timeout",
                f"no result within {timeout_s:g} s; the image is queued, poll "
                f"GET /v1/jobs/{job.job_id} for it",
                extra={"job_id": job.job_id, "image_id": image_id},
            ) from None
        if reply.result is not None:  # the worker sent it inline: no storage read
            result = reply.result.copy()
        else:
            result = await run_in_threadpool(self.result, reply.job_id, reply.image_id)
        result["filename"] = job.images[0]["filename"]
        result["timings_ms"] = _with_web_hops(result, started_at, replied_at)
        return result

    def _submit_one(
        self, job: PendingJob, filename: str, data: bytes, image_id: str, reply_to: str
    ) -> None:
        try:
            self.add(job, filename, data, image_id=image_id)
            # The caller gets the result in the response; the manifest waits for a timeout.
            self.commit(job, reply_to, manifest=False, inline_result=True)
        except BaseException:
            self.abort(job)
            raise

    def abort(self, job: PendingJob) -> None:
        """Remove what a failed upload stored; best effort, the job was never enqueued."""
        for key in job.stored_keys:
            try:
                self.storage.delete(key)
            except DlaasError:
                log.warning("abort_cleanup_failed", extra={"job_id": job.job_id, "key": key})

    def manifest(self, job_id: str, owner: str | None = None) -> protocol.JobManifest:
        """The job's manifest; with ``owner``, another owner's job is "not found" too."""
        not_found = WebError(404, "job_not_found", f"no job {job_id!r}; check the job_id")
        try:
            record = protocol.as_manifest(
                self.storage.get_json(protocol.manifest_key(_check_id(job_id)))
            )
        except ObjectNotFound:
            raise not_found from None
        if owner is not None and record.get("owner", ANONYMOUS) != owner:
            raise not_found
        return record

    def results(self, job_id: str, skip: Iterable[str] = ()) -> list[protocol.ResultRecord]:
        """Stored results of a job, except those whose image IDs are in ``skip``."""
        seen = set(skip)
        out = []
        for key in self.storage.list(protocol.results_prefix(_check_id(job_id))):
            image_id = key.rsplit("/", 1)[-1].removesuffix(".json")
            if image_id in seen:
                continue
            try:
                out.append(self._read_result(key))
            except ObjectNotFound:
                continue
        return out

    def result(self, job_id: str, image_id: str) -> protocol.ResultRecord:
        return self._read_result(protocol.result_key(job_id, image_id))

    def _read_result(self, key: str) -> protocol.ResultRecord:
        """A copy of the stored record, from the cache when this process has read it before."""
        with self._results_lock:
            cached = self._results.get(key)
            if cached is not None:
                self._results.move_to_end(key)
                return cached.copy()
        record = protocol.as_result(self.storage.get_json(key))
        with self._results_lock:
            self._results[key] = record
            if len(self._results) > RESULT_CACHE_SIZE:
                self._results.popitem(last=False)
        return record.copy()

    def status(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        manifest = self.manifest(job_id, owner)
        results = self.results(job_id)
        cancelled = self.storage.exists(protocol.cancel_key(job_id))
        return job_status(manifest, results, cancelled=cancelled)


def job_status(
    manifest: protocol.JobManifest,
    results: list[protocol.ResultRecord],
    *,
    cancelled: bool = False,
) -> dict[str, Any]:
    names = {image["image_id"]: image["filename"] for image in manifest["images"]}
    total = len(manifest["images"])
    for r in results:
        r["filename"] = names.get(r["image_id"], "")
    finished = [r["completed_at"] for r in results if r.get("completed_at")]
    state, counts = job_counts(total, (r["status"] for r in results), cancelled=cancelled)
    complete = is_finished(state)
    return {
        "job_id": manifest["job_id"],
        "created_at": manifest["created_at"],
        "status": state,
        "counts": counts,
        "elapsed_s": round(
            (max(finished) if complete and finished else time.time()) - manifest["created_at"], 3
        ),
        "images": manifest["images"],
        "results": results,
    }


def _with_web_hops(
    result: protocol.ResultRecord, started_at: float, replied_at: float
) -> dict[str, float]:
    """The worker's timings plus the web tier's hops, so one result shows the whole trip.

    ``web_in``: request to enqueue; ``queue_wait`` and ``worker`` come from the worker;
    ``reply``: result sent to the waiting request woken; ``web_out``: woken to answer;
    ``web_total``: request to answer. The hops are epoch-clock differences across
    processes, so they add up only on one machine.
    """
    now = time.time()
    timings = dict(result.get("timings_ms") or {})
    enqueued_at, completed_at = result.get("enqueued_at"), result.get("completed_at")
    if enqueued_at:
        timings["web_in"] = round((enqueued_at - started_at) * 1000, 3)
    if completed_at:
        timings["reply"] = round((replied_at - completed_at) * 1000, 3)
    timings["web_out"] = round((now - replied_at) * 1000, 3)
    timings["web_total"] = round((now - started_at) * 1000, 3)
    return timings


def _check_id(value: str) -> str:
    if not (len(value) == 32 and all(c in "0123456789abcdef" for c in value)):
        raise WebError(404, "job_not_found", f"{value!r} is not a job ID; IDs are 32 hex digits")
    return value


def _display_name(filename: str) -> str:
    """Keep a filename for display only: the last path part, printable, 255 chars at most."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:255] or "upload"
