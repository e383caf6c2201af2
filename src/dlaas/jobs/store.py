"""``JobStore``: the one place that reads and writes a job on the object store.

A job is begun, given its images one at a time (only one image is in memory), then
committed: its manifest written and every image enqueued in one ``send_batch``. A job is
visible to workers only once all of it is stored, so a client that is told "accepted"
has a whole job and one that is refused has none (``abort`` removes what was stored).

Reading: the manifest, the results (each read from storage once per process: a result
record never changes once written), and one typed ``JobStatus`` from manifest, results
and cancel marker by one rule. The catalog (the per-owner index, pages newest first),
cancelling and purging are here too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Unpack

from dlaas.errors import DlaasError, ObjectNotFound
from dlaas.jobs import layout
from dlaas.jobs.messages import ImageOptions, Task
from dlaas.jobs.records import (
    CancelMarker,
    ImageEntry,
    JobManifest,
    ListingRecord,
    ResultRecord,
    as_cancel_marker,
    as_listing,
    as_manifest,
    as_result,
    owner_of,
)
from dlaas.jobs.status import JobCounts, JobState, JobStatus, job_status
from dlaas.keys import ANONYMOUS
from dlaas.queue.base import Queue
from dlaas.storage.base import Storage

__all__ = ["MAX_PAGE", "JobCounts", "JobState", "JobStatus", "JobStore", "PendingJob", "job_status"]

log = logging.getLogger("dlaas.jobs")

RESULT_CACHE_SIZE = 20_000  # records (about 1 kB each)
MAX_PAGE = 100


@dataclass
class PendingJob:
    """A job being assembled, and what it stored so far (removed if it is aborted)."""

    job_id: str = field(default_factory=layout.new_job_id)
    images: list[ImageEntry] = field(default_factory=list)
    stored_keys: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    owner: str = ANONYMOUS  # the API key's owner; only they can read the job
    # A synchronous call of one image: it is stored under the job's own key (no folder).
    one_image: bool = False

    def manifest(self) -> JobManifest:
        return {
            "job_id": self.job_id,
            "created_at": self.created_at,
            "images": self.images,
            "owner": self.owner,
        }


class JobStore:
    def __init__(self, storage: Storage, queue: Queue) -> None:
        self.storage = storage
        self.queue = queue
        self._results: OrderedDict[str, ResultRecord] = OrderedDict()
        self._results_lock = threading.Lock()

    # Writing a job ------------------------------------------------------------

    def add(self, job: PendingJob, entry: ImageEntry, data: bytes) -> None:
        """Store one checked image of ``job``."""
        if job.one_image and job.images:
            raise ValueError(f"job {job.job_id} was begun for one image; it cannot take two")
        key = layout.input_key(job.job_id, entry["image_id"], one_image=job.one_image)
        self.storage.put(key, data)
        job.stored_keys.append(key)
        job.images.append(entry)

    def put_record(self, job: PendingJob, key: str, record: object) -> None:
        """Store a record that belongs to ``job`` (its outbox, its idempotency record),
        so that an abort removes it too."""
        self.storage.put_json(key, record)
        job.stored_keys.append(key)

    def create_record(self, key: str, record: object) -> bool:
        """Store ``record`` at ``key`` only if nothing is there (``put_if_absent``): of
        racing writers on any process sharing the store, exactly one gets True."""
        return self.storage.put_json_if_absent(key, record)

    def remember_owner(self, job: PendingJob) -> None:
        """Index the job under its owner; without API keys the list is every job."""
        if job.owner != ANONYMOUS:
            key = layout.owner_index_key(job.owner, job.job_id)
            self.storage.put(key, b"")
            job.stored_keys.append(key)

    def write_manifest(self, job: PendingJob) -> JobManifest:
        """Make the job visible at ``GET /v1/jobs/<id>``; return the manifest."""
        record = job.manifest()
        self.put_record(job, layout.manifest_key(job.job_id), record)
        return record

    def enqueue(
        self,
        job_id: str,
        image_ids: Iterable[str],
        reply_to: str | None,
        *,
        queue: Queue | None = None,
        one_image: bool = False,
        **options: Unpack[ImageOptions],
    ) -> int:
        """One task per image in one ``send_batch`` to ``queue`` (default the job store's:
        a model's own queue when it has one); ``one_image`` and ``options`` as ``tasks``'."""
        tasks = self.tasks(job_id, image_ids, reply_to, one_image=one_image, **options)
        if tasks:
            (queue or self.queue).send_batch(tasks)
        return len(tasks)

    @staticmethod
    def tasks(
        job_id: str,
        image_ids: Iterable[str],
        reply_to: str | None,
        *,
        one_image: bool = False,
        **options: Unpack[ImageOptions],
    ) -> list[str]:
        """The queue bodies of a job's images, to send in one batch (several jobs' may
        share it); ``options`` are ``Task``'s fields; ``one_image``: the job's image is
        stored as ``PendingJob.one_image`` says."""
        now = time.time()
        return [
            Task.of(
                job_id, image_id, one_image=one_image, reply_to=reply_to, enqueued_at=now, **options
            ).to_json()
            for image_id in image_ids
        ]

    def enqueue_source(
        self,
        job_id: str,
        source: str,
        keys: Iterable[str],
        reply_to: str | None,
        *,
        queue: Queue | None = None,
        **options: Unpack[ImageOptions],
    ) -> int:
        """One task per source key, in one ``send_batch`` to ``queue`` (as ``enqueue``);
        IDs come from the keys; ``options`` are ``Task``'s fields (model, version)."""
        now = time.time()
        tasks = [
            Task.of_source(
                job_id, source, key, reply_to=reply_to, enqueued_at=now, **options
            ).to_json()
            for key in keys
        ]
        if tasks:
            (queue or self.queue).send_batch(tasks)
        return len(tasks)

    def abort(self, job: PendingJob) -> None:
        """Remove what a failed upload stored; best effort, the job was never enqueued."""
        for key in job.stored_keys:
            try:
                self.storage.delete(key)
            except DlaasError:
                log.warning("abort_cleanup_failed", extra={"job_id": job.job_id, "key": key})

    # Reading a job ------------------------------------------------------------

    def manifest(self, job_id: str, owner: str | None = None) -> JobManifest | None:
        """The manifest; None when there is none or (with ``owner``) it is another's."""
        if not layout.is_job_id(job_id):
            return None
        try:
            manifest = as_manifest(self.storage.get_json(layout.manifest_key(job_id)))
        except ObjectNotFound:
            return None
        if owner is not None and owner != ANONYMOUS and owner_of(manifest) != owner:
            return None
        return manifest

    def results(self, job_id: str, skip: Iterable[str] = ()) -> list[ResultRecord]:
        """Stored results of a job, except those whose image IDs are in ``skip``."""
        seen = set(skip)
        out = []
        for key in self.storage.list(layout.results_prefix(job_id)):
            if layout.image_of_result(key) in seen:
                continue
            try:
                out.append(self._read_result(key))
            except ObjectNotFound:
                continue
        return out

    def result(self, job_id: str, image_id: str) -> ResultRecord:
        return self._read_result(layout.result_key(job_id, image_id))

    def result_ids(self, job_id: str) -> set[str]:
        """The images of a job that have a result, read from the key listing alone."""
        return {layout.image_of_result(k) for k in self.storage.list(layout.results_prefix(job_id))}

    def _read_result(self, key: str) -> ResultRecord:
        """A copy of the stored record, from the cache when this process read it before."""
        with self._results_lock:
            cached = self._results.get(key)
            if cached is not None:
                self._results.move_to_end(key)
                return cached.copy()
        record = as_result(self.storage.get_json(key))
        with self._results_lock:
            self._results[key] = record
            if len(self._results) > RESULT_CACHE_SIZE:
                self._results.popitem(last=False)
        return record.copy()

    def put_result(self, record: ResultRecord) -> None:
        self.storage.put_json(layout.result_key(record["job_id"], record["image_id"]), record)

    def is_cancelled(self, job_id: str) -> bool:
        return self.storage.exists(layout.cancel_key(job_id))

    def cancel_marker(self, job_id: str) -> CancelMarker | None:
        try:
            return as_cancel_marker(self.storage.get_json(layout.cancel_key(job_id)))
        except ObjectNotFound:
            return None

    def listing(self, job_id: str) -> ListingRecord | None:
        """A job over a source: how far its listing got; None for an upload."""
        try:
            return as_listing(self.storage.get_json(layout.listing_key(job_id)))
        except ObjectNotFound:
            return None

    def extent(self, manifest: JobManifest) -> tuple[int, bool]:
        """How many images the job has so far, and whether more may come (a listing)."""
        if "source" not in manifest:
            return len(manifest["images"]), False
        listing = self.listing(manifest["job_id"])
        if listing is None:
            return 0, True  # the listing record is written just after the manifest
        return listing["count"], listing["phase"] == "listing"

    def source_status(self, manifest: JobManifest, listing: ListingRecord | None) -> JobStatus:
        """A job over a source, without reading its results (there may be millions):
        ``settled`` from the result keys while it runs, the output's tally once written
        (``listing`` is its record, read once by the caller for a consistent answer)."""
        job_id = manifest["job_id"]
        total = 0 if listing is None else listing["count"]
        cancelled = self.is_cancelled(job_id)
        if listing is not None and "tally" in listing:
            tally = listing["tally"]
            counts: JobCounts = {
                "total": total,
                "queued": 0,
                "done": tally.get("done", 0),
                "failed": tally.get("failed", 0) + tally.get("missing", 0),
            }
            if cancelled or tally.get("cancelled"):
                counts["cancelled"] = tally.get("cancelled", 0)
            return JobStatus("cancelled" if "cancelled" in counts else "complete", counts)
        settled = len(self.storage.list(layout.results_prefix(job_id)))
        counts = {"total": total, "queued": max(0, total - settled), "settled": settled}
        return JobStatus("cancelling" if cancelled else "running", counts)

    def status(self, manifest: JobManifest, results: list[ResultRecord] | None = None) -> JobStatus:
        """The job's status from its results (read here unless given) and cancel marker."""
        job_id = manifest["job_id"]
        results = self.results(job_id) if results is None else results
        total, listing = self.extent(manifest)
        return job_status(
            total,
            (r["status"] for r in results),
            cancelled=self.is_cancelled(job_id),
            listing=listing,
        )

    def settled_status(self, job_id: str) -> tuple[JobManifest, JobStatus] | None:
        """As ``status``, but no result is read until every image has one (cheap for a
        job still running); None when the job is gone."""
        manifest = self.manifest(job_id)
        if manifest is None:
            return None
        total, listing = self.extent(manifest)
        if listing or len(self.storage.list(layout.results_prefix(job_id))) < total:
            cancelled = self.is_cancelled(job_id)
            return manifest, job_status(total, (), cancelled=cancelled, listing=listing)
        return manifest, self.status(manifest)

    # The catalog --------------------------------------------------------------

    def job_ids(self, owner: str) -> list[str]:
        """The owner's job IDs, newest first (every job's when the owner is anonymous)."""
        if owner == ANONYMOUS:
            found = (layout.job_of_manifest(k) for k in self.storage.list(layout.JOBS))
            ids = [i for i in found if i is not None]
        else:
            ids = [k.rsplit("/", 1)[1] for k in self.storage.list(layout.owner_prefix(owner))]
        return sorted(ids, key=layout.sort_key, reverse=True)

    def page(
        self, owner: str, *, limit: int, cursor: str | None
    ) -> tuple[list[JobManifest], str | None]:
        """Up to ``limit`` manifests after ``cursor`` (a job ID), and the next cursor.

        A job purged or expired between the listing and the read is left out, not an error.
        """
        ids = self.job_ids(owner)
        if cursor is not None:
            after = layout.sort_key(cursor)
            ids = [i for i in ids if layout.sort_key(i) < after]
        manifests: list[JobManifest] = []
        for position, job_id in enumerate(ids):
            manifest = self.manifest(job_id, owner)
            if manifest is None:
                continue
            manifests.append(manifest)
            if len(manifests) == limit:
                more = position < len(ids) - 1
                return manifests, (job_id if more else None)
        return manifests, None

    def cancel(self, job_id: str, *, purge: bool = False, owner: str = ANONYMOUS) -> None:
        """Mark the job cancelled: workers drop its messages from now on.

        With ``purge`` the marker says so (workers then write nothing for it) and every
        object of the job goes; the marker stays until retention, as a tombstone that
        keeps late workers from writing results for a job that no longer exists.
        """
        marker: CancelMarker = {"cancelled_at": time.time(), "purged": purge}
        self.storage.put_json(layout.cancel_key(job_id), marker)
        log.info("job_cancelled", extra={"job_id": job_id, "purge": purge})
        if purge:
            self.remove(job_id, keep_marker=True, owner=owner)

    def remove(self, job_id: str, *, keep_marker: bool = False, owner: str = ANONYMOUS) -> int:
        """Delete every object of the job, manifest first (so GET answers 404 at once)."""
        keys = list(layout.job_single_keys(job_id))
        if owner != ANONYMOUS:
            keys.append(layout.owner_index_key(owner, job_id))
        for prefix in layout.job_prefixes(job_id):
            keys.extend(self.storage.list(prefix))
        if not keep_marker:
            keys.append(layout.cancel_key(job_id))
        removed = 0
        for key in keys:
            try:
                self.storage.delete(key)
                removed += 1
            except DlaasError as exc:
                log.warning(
                    "remove_failed", extra={"job_id": job_id, "key": key, "error": str(exc)}
                )
        return removed
