"""``SourceJobs``: runs the jobs over stored images, from listing to the output file.

A job over a source goes through three phases, each resumable from its records alone
(``ListingRecord`` at ``listing_key``; docs/api.md, "Jobs over a bucket or a folder"):

1. ``listing``: one page of keys at a time, stored as ``listing_page_key`` *before* its
   tasks are enqueued, then the record's cursor moves past it. A process that dies in
   between leaves a page the record does not count yet: its successor re-enqueues that
   page's keys that have no result (image IDs come from keys, so nothing doubles, and a
   worker drops a task whose result exists). Memory holds one page, never the listing.
2. ``waiting``: until every listed image has a result (the job's status says finished).
3. ``written``: the results, page by page in key order, streamed into one JSON Lines
   object under the job's output folder.

One process runs a job at a time: it holds a lease in the record and renews it; when
the lease runs out (the process died), another takes the job over by creating the next
``listing_claim_key`` (create-if-absent: one winner), and a process that sees a newer
claim than its own stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from dlaas.errors import DlaasError, ObjectNotFound
from dlaas.jobs import layout
from dlaas.jobs.records import (
    JobManifest,
    JobSource,
    ListingPage,
    ListingRecord,
    as_listing,
    as_listing_page,
)
from dlaas.jobs.sources import PAGE_KEYS, KeyPages, folder_of
from dlaas.jobs.store import JobStore
from dlaas.queue.base import Queue
from dlaas.storage import Storage

log = logging.getLogger("dlaas.jobs")

LEASE_S = 10.0
READ_THREADS = 16
MAX_OPEN_FOLDERS = 32  # result reads in flight while the output is written

OpenFolder = Callable[[str, bool], Storage]
"""``open_folder(url, read_only)``: a source folder (read-only) or an output folder."""


class Lost(DlaasError):
    """Another process took the job over (a newer claim): this one stops."""


def first_record(job_id: str, holder: str, lease_s: float) -> ListingRecord:
    return {
        "job_id": job_id,
        "phase": "listing",
        "cursor": "",
        "pages": 0,
        "count": 0,
        "generation": 0,
        "holder": holder,
        "lease_until": time.time() + lease_s,
        "error": None,
        "cancelled": False,
    }


class SourceJobs:
    def __init__(
        self,
        jobs: JobStore,
        open_folder: OpenFolder,
        *,
        holder: str,
        reply_to: str | None = None,
        lease_s: float = LEASE_S,
        max_backlog: int | None = None,
        on_enqueued: Callable[[int, str | None], None] | None = None,
        page_keys: int = PAGE_KEYS,
        route: Callable[[str | None], Queue] | None = None,
    ) -> None:
        self.jobs = jobs
        self.storage = jobs.storage
        self._open_folder = open_folder
        self._folders: dict[tuple[str, bool], Storage] = {}
        self.holder = holder
        self.reply_to = reply_to
        self.lease_s = lease_s
        self.max_backlog = max_backlog
        self.on_enqueued = on_enqueued
        self.page_keys = page_keys
        self.route = route  # the queue of a model's pool (None: the job store's)
        self._stop = threading.Event()
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._scanner: threading.Thread | None = None

    def open_folder(self, url: str, read_only: bool) -> Storage:
        """A source or output folder, opened once (an S3 client is costly) and kept."""
        key = (url, read_only)
        with self._lock:
            folder = self._folders.get(key)
        if folder is None:
            folder = self._open_folder(url, read_only)
            with self._lock:
                if len(self._folders) >= MAX_OPEN_FOLDERS:
                    self._folders.pop(next(iter(self._folders))).close()
                self._folders[key] = folder
        return folder

    # Starting and resuming ------------------------------------------------------

    def begin(self, job_id: str) -> None:
        """Record a new job's listing (claim 0 is this process's) and start it."""
        record = first_record(job_id, self.holder, self.lease_s)
        self.storage.put_if_absent(layout.listing_claim_key(job_id, 0), b"")
        self.storage.put_json(layout.listing_key(job_id), record)
        self._start(record)

    def start_scanner(self) -> None:
        """Resume unfinished jobs now, and take over those whose holder dies later."""
        self._scanner = threading.Thread(target=self._scan_loop, name="source-jobs", daemon=True)
        self._scanner.start()

    def close(self) -> None:
        self._stop.set()

    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.resume_all()
            except DlaasError as exc:
                log.warning("source_jobs_scan_failed", extra={"error": str(exc)})
            self._stop.wait(self.lease_s / 2)

    def resume_all(self) -> int:
        """Claim and start every unfinished job whose lease ran out; how many."""
        started = 0
        for key in self.storage.list(layout.LISTINGS):
            job_id = layout.job_of_listing(key)
            if job_id is None or job_id in self._running:
                continue
            try:
                record = as_listing(self.storage.get_json(key))
            except ObjectNotFound:
                continue
            if record["phase"] == "written" or record["lease_until"] > time.time():
                continue
            claimed = self._claim(record)
            if claimed is not None:
                log.info("source_job_resumed", extra={"job_id": job_id, "phase": claimed["phase"]})
                self._start(claimed)
                started += 1
        return started

    def _claim(self, record: ListingRecord) -> ListingRecord | None:
        generation = record["generation"] + 1
        if not self.storage.put_if_absent(
            layout.listing_claim_key(record["job_id"], generation), b""
        ):
            return None
        claimed: ListingRecord = {
            **record,
            "generation": generation,
            "holder": self.holder,
            "lease_until": time.time() + self.lease_s,
        }
        self.storage.put_json(layout.listing_key(record["job_id"]), claimed)
        return claimed

    def _start(self, record: ListingRecord) -> None:
        job_id = record["job_id"]
        thread = threading.Thread(
            target=self._run, args=(record,), name=f"source-job-{job_id[:8]}", daemon=True
        )
        with self._lock:
            self._running[job_id] = thread
        thread.start()

    # One job ----------------------------------------------------------------------

    def _run(self, record: ListingRecord) -> None:
        job_id = record["job_id"]
        try:
            manifest = self.jobs.manifest(job_id)
            if manifest is None or "source" not in manifest:
                return  # purged, or never a job over a source
            if record["phase"] == "listing":
                record = self._list(manifest, record)
            if record["phase"] == "waiting" and self._wait(record):
                self._write_output(manifest["source"], record)
        except Lost:
            log.info("source_job_taken_over", extra={"job_id": job_id})
        except DlaasError as exc:  # the lease runs out and a scan tries again
            log.warning("source_job_failed", extra={"job_id": job_id, "error": str(exc)})
        finally:
            with self._lock:
                self._running.pop(job_id, None)

    def _list(self, manifest: JobManifest, record: ListingRecord) -> ListingRecord:
        source = manifest["source"]
        job_id = manifest["job_id"]
        try:
            pages = self._pages(source)
        except DlaasError as exc:
            return self._stop_listing(record, f"cannot read the source: {exc}")
        folder = source["url"] if source["kind"] == "prefix" else folder_of(source["url"])
        first = True  # only a dead holder leaves a pending page, so only the first may be
        while not self._stop.is_set():
            if self.jobs.is_cancelled(job_id):
                record["cancelled"] = True
                break
            self._hold_back(record)
            page, first = self._pending_page(record) if first else None, False
            try:
                keys, cursor = pages.next_page(record["cursor"]) if page is None else page
                done = (not keys) if pages.manifest is None else not pages.more(cursor)
            except DlaasError as exc:  # the source vanished mid-listing
                return self._stop_listing(record, f"the source stopped answering: {exc}")
            if keys:
                sent = self._enqueue(source, folder, record, keys, cursor, resumed=page is not None)
                record["cursor"] = cursor
                record["pages"] += 1
                record["count"] += len(keys)
                self._save(record)
                if self.on_enqueued is not None and sent:
                    self.on_enqueued(sent, source.get("model"))
            else:
                record["cursor"] = cursor
            if done:
                break
        if self._stop.is_set():
            raise Lost("stopping")
        log.info("source_job_listed", extra={"job_id": job_id, "images": record["count"]})
        record["phase"] = "waiting"
        self._save(record)
        return record

    def _pages(self, source: JobSource) -> KeyPages:
        if source["kind"] == "prefix":
            return KeyPages(self.open_folder(source["url"], True), page_keys=self.page_keys)
        folder, name = source["url"].rsplit("/", 1)
        holder = self.open_folder(folder + "/", True)
        return KeyPages(holder, manifest=lambda: holder.get(name), page_keys=self.page_keys)

    def _pending_page(self, record: ListingRecord) -> tuple[list[str], str] | None:
        """A page a dead holder stored but did not count: enqueued, or maybe not."""
        try:
            page = as_listing_page(
                self.storage.get_json(layout.listing_page_key(record["job_id"], record["pages"]))
            )
        except ObjectNotFound:
            return None
        return page["keys"], page["cursor"]

    def _enqueue(
        self,
        source: JobSource,
        folder: str,
        record: ListingRecord,
        keys: list[str],
        cursor: str,
        *,
        resumed: bool,
    ) -> int:
        job_id = record["job_id"]
        if resumed:  # only what has no result yet: the rest ran before the crash
            keys = [
                k
                for k in keys
                if not self.storage.exists(layout.result_key(job_id, layout.source_image_id(k)))
            ]
        else:
            page: ListingPage = {"keys": keys, "cursor": cursor}
            self.storage.put_json(layout.listing_page_key(job_id, record["pages"]), page)
        model = source.get("model")
        return self.jobs.enqueue_source(
            job_id,
            folder,
            keys,
            self.reply_to,
            queue=self.route(model) if self.route is not None else None,
            model=model,
            version=source.get("version"),
        )

    def _stop_listing(self, record: ListingRecord, error: str) -> ListingRecord:
        log.warning("source_listing_stopped", extra={"job_id": record["job_id"], "error": error})
        record["phase"], record["error"] = "waiting", error[:500]
        self._save(record)
        return record

    def _hold_back(self, record: ListingRecord) -> None:
        """Wait while the queue holds ``max_backlog`` messages: the listing never runs
        further ahead of the workers than uploads may."""
        if self.max_backlog is None:
            return
        while not self._stop.is_set():
            if self.jobs.queue.stats().visible < self.max_backlog:
                return
            self._renew(record)
            self._stop.wait(1.0)

    def _wait(self, record: ListingRecord) -> bool:
        """Until every listed image has a result; False if this process stops first.
        Only result keys are listed: no record is read (or kept) until the output."""
        job_id = record["job_id"]
        poll_s = min(5.0, 0.5 + record["count"] / 20_000)  # one check lists the results
        while not self._stop.is_set():
            if not self.storage.exists(layout.manifest_key(job_id)):
                raise Lost("the job was removed")
            if len(self.storage.list(layout.results_prefix(job_id))) >= record["count"]:
                return True
            self._renew(record)
            self._stop.wait(poll_s)
        return False

    def _write_output(self, source: JobSource, record: ListingRecord) -> None:
        job_id = record["job_id"]
        output = self.open_folder(source["output"], False)
        tally: dict[str, int] = {}
        output.put_stream(layout.output_key(job_id), self._lines(record, tally))
        record["phase"], record["tally"] = "written", tally
        record["output_url"] = source["output"] + layout.output_key(job_id)
        self._save(record)
        log.info("source_job_written", extra={"job_id": job_id, "lines": record["count"]})

    def _lines(self, record: ListingRecord, tally: dict[str, int]) -> Iterator[bytes]:
        """One chunk per page: its keys in order, each with its result; ``tally`` counts
        the lines by status."""
        job_id = record["job_id"]
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for number in range(record["pages"]):
                page = as_listing_page(
                    self.storage.get_json(layout.listing_page_key(job_id, number))
                )
                chunk = []
                for status, line in pool.map(lambda k: _line(self.jobs, job_id, k), page["keys"]):
                    tally[status] = tally.get(status, 0) + 1
                    chunk.append(line)
                yield b"".join(chunk)
                self._renew(record)

    # The record -------------------------------------------------------------------

    def _renew(self, record: ListingRecord) -> None:
        if record["lease_until"] - time.time() < self.lease_s * 2 / 3:
            self._save(record)

    def _save(self, record: ListingRecord) -> None:
        """Write the record, unless another process holds a newer claim."""
        key = layout.listing_key(record["job_id"])
        current = as_listing(self.storage.get_json(key))
        if current["generation"] != record["generation"]:
            raise Lost(f"claim {current['generation']} replaced ours")
        record["lease_until"] = time.time() + self.lease_s
        self.storage.put_json(key, record)


def _line(jobs: JobStore, job_id: str, key: str) -> tuple[str, bytes]:
    image_id = layout.source_image_id(key)
    line: dict[str, Any] = {"key": key, "image_id": image_id}
    try:
        result = jobs.storage.get_json(layout.result_key(job_id, image_id))
    except ObjectNotFound:
        line.update(status="missing", predictions=[], error="no result was stored")
    else:
        line.update(
            status=result.get("status"),
            predictions=result.get("predictions", []),
            error=result.get("error"),
        )
    return str(line["status"]), orjson.dumps(line) + b"\n"
