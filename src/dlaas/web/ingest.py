"""Accepting images: check each upload, store it in a job, then commit the job.

The checks (format, size, pixels) are the web tier's; storing and enqueueing are
``JobStore``'s. What this adds is the web tier's bookkeeping around a commit: the
per-owner backlog, the accepted-images metric and the controller's wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from dlaas.errors import WebError
from dlaas.jobs import layout
from dlaas.jobs.records import ImageEntry
from dlaas.jobs.store import JobStore, PendingJob
from dlaas.keys import ANONYMOUS
from dlaas.model.index import Target
from dlaas.queue.base import Queue as TaskQueue
from dlaas.web.security.tenancy import OwnerBacklog
from dlaas.web.uploads.validate import check_image

log = logging.getLogger("dlaas.web")

MAX_BURST = 64  # calls stored and enqueued together at most: one per client of a busy load
CLOSE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SyncCall:
    """A synchronous call's images, to store and enqueue as one job of inline results."""

    job: PendingJob
    images: Sequence[tuple[str, bytes]]
    image_ids: Sequence[str]
    reply_to: str  # the web process's reply queue
    probabilities: bool = False
    target: Target | None = None  # None: the workers' own model


Settle = tuple[SyncCall, "asyncio.Future[None]"]


class Bursts:
    """One thread that runs ``handle`` on every call waiting, then settles each call's
    future with one wake-up of its event loop per burst."""

    def __init__(self, handle: Callable[[Sequence[SyncCall]], list[Exception | None]]) -> None:
        self._handle = handle
        self._calls: queue.SimpleQueue[Settle | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, call: SyncCall) -> asyncio.Future[None]:
        """Hand ``call`` over; the future ends when it is stored and enqueued, or refused."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dlaas-submit", daemon=True)
                self._thread.start()
            self._calls.put((call, future))
        return future

    def close(self) -> None:
        """Finish the calls handed over, then stop (a later ``put`` starts again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._calls.put(None)
        if thread is not None:
            thread.join(timeout=CLOSE_TIMEOUT_S)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._calls.get()
            if first is None:
                return
            burst = [first]
            while len(burst) < MAX_BURST:
                try:
                    item = self._calls.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                burst.append(item)
            try:
                errors = self._handle([call for call, _ in burst])
            except Exception as exc:  # a bug: fail this burst's calls, keep serving
                log.exception("submit_failed")
                errors = [exc] * len(burst)
            _wake(burst, errors)


def _wake(burst: list[Settle], errors: list[Exception | None]) -> None:
    """Settle each future on its own loop: one ``call_soon_threadsafe`` per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Exception | None]]]
    by_loop = {}
    for (_, future), error in zip(burst, errors, strict=True):
        by_loop.setdefault(future.get_loop(), []).append((future, error))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[None], Exception | None]]) -> None:
    for future, error in settled:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class Ingest:
    def __init__(
        self,
        jobs: JobStore,
        *,
        max_bytes: int,
        max_pixels: int,
        on_accepted: Callable[[int, str | None], None] | None = None,
        owner_backlog: OwnerBacklog | None = None,
        route: Callable[[str | None], TaskQueue] | None = None,
    ) -> None:
        """``on_accepted(n, model)`` after each commit; ``route(model)`` is the queue a
        model's tasks go to (None: the job store's queue for every model)."""
        self.jobs = jobs
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.on_accepted = on_accepted
        self.owner_backlog = owner_backlog
        self.route = route
        self._bursts = Bursts(self.submit_burst)

    def add(
        self, job: PendingJob, filename: str, data: bytes, image_id: str | None = None
    ) -> ImageEntry:
        """Check and store one image of ``job``; raises WebError naming the file."""
        try:
            info = check_image(data, filename, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        except WebError as exc:
            exc.detail = f"{exc.detail} (file {len(job.images) + 1} of the upload)"
            raise
        entry: ImageEntry = {
            "image_id": image_id or layout.new_id(),
            "filename": _display_name(filename),
            "format": info.format,
            "width": info.width,
            "height": info.height,
            "size_bytes": info.size_bytes,
        }
        self.jobs.add(job, entry, data)
        return entry

    def commit(
        self,
        job: PendingJob,
        reply_to: str | None,
        *,
        progress: bool = False,
        manifest: bool = True,
        inline_result: bool = False,
        probabilities: bool = False,
        target: Target | None = None,
    ) -> None:
        """Write the manifest and enqueue every image in one batch.

        ``progress`` asks workers for a "classifying" notice too (job streams show it).
        ``manifest=False`` and ``inline_result`` are a synchronous call's: it answers with
        the results from the replies, and writes the manifest only if it has to send its
        caller to ``GET /v1/jobs/<id>``. ``probabilities`` asks for every class's score.
        ``target``: the model and version the request resolved to (None: the workers' own).
        """
        if not job.images:
            raise WebError(400, "no_files", "the upload holds no files; send one or more images")
        if manifest:
            self.jobs.write_manifest(job)
        image_ids = [image["image_id"] for image in job.images]
        model = target.model if target is not None else None
        self.jobs.enqueue(
            job.job_id,
            image_ids,
            reply_to,
            progress=progress,
            inline_result=inline_result,
            probabilities=probabilities,
            model=model,
            version=target.version if target is not None else None,
            queue=self.route(model) if self.route is not None else None,
            one_image=job.one_image,
        )
        self._accepted(job, image_ids, model)

    def _accepted(self, job: PendingJob, image_ids: list[str], model: str | None) -> None:
        """The bookkeeping of an enqueued job: owner backlog, trail, metric, wake-up."""
        if self.owner_backlog is not None:
            self.owner_backlog.accepted(job.owner, image_ids)
        for image_id in image_ids:
            log.info("image_accepted", extra={"job_id": job.job_id, "image_id": image_id})
        if self.on_accepted:
            self.on_accepted(len(image_ids), model)

    async def submit(self, call: SyncCall) -> None:
        """Store and enqueue a synchronous call's images, or nothing if any is refused.

        Calls go to one thread that takes every call waiting (``submit_burst``): one
        wake-up of that thread and one of the event loop per burst, and one queue
        transaction per burst, where a thread-pool hop per call cost a wake-up each way
        and a transaction per call (docs/performance.md). Returns once the call is
        stored and enqueued, or raises why not; a cancelled caller waits for that too.
        """
        future = self._bursts.put(call)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])  # stored or aborted, like any other call
            if not future.cancelled():
                future.exception()  # retrieved: the caller is gone, nobody raises it
            raise

    def submit_burst(self, calls: Sequence[SyncCall]) -> list[Exception | None]:
        """Store every call's images, then enqueue all their tasks, one ``send_batch`` per
        queue; each call's error (None: accepted). A refused call leaves nothing stored."""
        errors: list[Exception | None] = [None] * len(calls)
        batches: dict[int, tuple[TaskQueue, list[str], list[int]]] = {}
        for n, call in enumerate(calls):
            try:
                queue, tasks = self._stored(call)
            except Exception as exc:
                self.jobs.abort(call.job)
                errors[n] = exc
                continue
            batch = batches.setdefault(id(queue), (queue, [], []))
            batch[1].extend(tasks)
            batch[2].append(n)
        for queue, tasks, members in batches.values():
            try:
                queue.send_batch(tasks)
            except Exception as exc:
                for n in members:
                    self.jobs.abort(calls[n].job)
                    errors[n] = exc
                continue
            for n in members:
                call = calls[n]
                model = call.target.model if call.target is not None else None
                self._accepted(call.job, list(call.image_ids), model)
        return errors

    def _stored(self, call: SyncCall) -> tuple[TaskQueue, list[str]]:
        """Check and store a call's images; its queue and task bodies."""
        job = call.job
        for (filename, data), image_id in zip(call.images, call.image_ids, strict=True):
            self.add(job, filename, data, image_id=image_id)
        if not job.images:
            raise WebError(400, "no_files", "the upload holds no files; send one or more images")
        target = call.target
        model = target.model if target is not None else None
        tasks = self.jobs.tasks(
            job.job_id,
            call.image_ids,
            call.reply_to,
            one_image=job.one_image,
            inline_result=True,
            probabilities=call.probabilities,
            model=model,
            version=target.version if target is not None else None,
        )
        queue = self.route(model) if self.route is not None else None
        return queue or self.jobs.queue, tasks

    def close(self) -> None:
        """Stop the submitting thread once the calls already handed to it are done."""
        self._bursts.close()

    @asynccontextmanager
    async def assembling(self, owner: str = ANONYMOUS) -> AsyncIterator[PendingJob]:
        """A new job to ``add`` to and ``commit``; if the block raises, it is aborted."""
        job = PendingJob(owner=owner)
        try:
            yield job
        except BaseException:
            await run_in_threadpool(self.jobs.abort, job)
            raise


def _display_name(filename: str) -> str:
    """Keep a filename for display only: the last path part, printable, 255 chars at most."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:255] or "upload"
