"""Accepting images: check each upload, store it in a job, then commit the job.

The checks (format, size, pixels) are the web tier's; storing and enqueueing are
``JobStore``'s. What this adds is the web tier's bookkeeping around a commit: the
per-owner backlog, the accepted-images metric and the controller's wake-up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from starlette.concurrency import run_in_threadpool

from dlaas.errors import WebError
from dlaas.jobs import layout
from dlaas.jobs.records import ImageEntry
from dlaas.jobs.store import JobStore, PendingJob
from dlaas.keys import ANONYMOUS
from dlaas.model.index import Target
from dlaas.queue.base import Queue
from dlaas.web.security.tenancy import OwnerBacklog
from dlaas.web.uploads.validate import check_image

log = logging.getLogger("dlaas.web")


class Ingest:
    def __init__(
        self,
        jobs: JobStore,
        *,
        max_bytes: int,
        max_pixels: int,
        on_accepted: Callable[[int, str | None], None] | None = None,
        owner_backlog: OwnerBacklog | None = None,
        route: Callable[[str | None], Queue] | None = None,
    ) -> None:
        """``on_accepted(n, model)`` after each commit; ``route(model)`` is the queue a
        model's tasks go to (None: the job store's queue for every model)."""
        self.jobs = jobs
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.on_accepted = on_accepted
        self.owner_backlog = owner_backlog
        self.route = route

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
        if self.owner_backlog is not None:
            self.owner_backlog.accepted(job.owner, image_ids)
        for image_id in image_ids:
            log.info("image_accepted", extra={"job_id": job.job_id, "image_id": image_id})
        if self.on_accepted:
            self.on_accepted(len(image_ids), model)

    def submit_sync(
        self,
        job: PendingJob,
        images: Sequence[tuple[str, bytes]],
        image_ids: Sequence[str],
        reply_to: str,
        probabilities: bool,
        target: Target | None = None,
    ) -> None:
        """Store and enqueue a synchronous call's images, or nothing if any is refused."""
        try:
            for (filename, data), image_id in zip(images, image_ids, strict=True):
                self.add(job, filename, data, image_id=image_id)
            self.commit(
                job,
                reply_to,
                manifest=False,
                inline_result=True,
                probabilities=probabilities,
                target=target,
            )
        except BaseException:
            self.jobs.abort(job)
            raise

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
