"""The retention janitor: removes jobs older than ``--retention-h`` from the store.

It tells a job's age from its ID (``layout.job_created_at``), so a sweep lists keys
and reads nothing but the manifests of jobs stored before IDs carried their time.
Deleting is idempotent, so several processes may sweep at once; a lease
(``layout.JANITOR_LEASE``) only spares them the duplicate work. It also removes what late
workers wrote for purged jobs, idempotency records past their 24 h, and the records of
workers that stopped longer ago than the retention.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from dlaas.errors import DlaasError, ObjectNotFound
from dlaas.jobs import layout
from dlaas.jobs.idempotency import IDEMPOTENCY_TTL_S
from dlaas.jobs.records import (
    JanitorLease,
    RecordError,
    as_cancel_marker,
    as_health,
    as_lease,
    as_manifest,
    idempotency_created_at,
)
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.janitor")


class Janitor:
    def __init__(
        self,
        storage: Storage,
        *,
        retention_s: float,
        interval_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.clock = clock
        self.name = uuid.uuid4().hex[:12]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="janitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._take_lease():
                    self.sweep()
            except DlaasError as exc:
                log.warning("janitor_failed", extra={"error": str(exc)})
            self._stop.wait(self.interval_s)

    def _take_lease(self) -> bool:
        """Best effort: skip a sweep another process started less than an interval ago."""
        now = self.clock()
        try:
            lease: JanitorLease | None = as_lease(self.storage.get_json(layout.JANITOR_LEASE))
        except (ObjectNotFound, RecordError):
            lease = None
        if lease is not None and lease["holder"] != self.name and lease["until"] > now:
            return False
        mine: JanitorLease = {"holder": self.name, "until": now + self.interval_s * 0.9}
        self.storage.put_json(layout.JANITOR_LEASE, mine)
        return True

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many objects of each kind it deleted."""
        now = self.clock()
        removed: dict[str, int] = {}
        if self.retention_s > 0:
            cutoff = now - self.retention_s
            ages: dict[str, float | None] = {}
            for prefix, position in layout.JOB_FAMILIES:
                keys = self.storage.list(prefix)
                old = [
                    k for k, j in layout.iter_job_ids(keys, position) if self._age(j, ages, cutoff)
                ]
                removed[prefix.rstrip("/")] = self._delete(old)
            removed["workers"] = self._delete(self._stopped_workers(cutoff))
        removed["purged_leftovers"] = self._delete(self._purged_leftovers())
        removed["idempotency"] = self._delete(self._old_idempotency(now))
        if any(removed.values()):
            log.info("janitor_swept", extra={"removed": removed})
        return removed

    def _age(self, job_id: str, ages: dict[str, float | None], cutoff: float) -> bool:
        """True when the job is older than the cutoff; unknown ages are kept."""
        if job_id not in ages:
            created = layout.job_created_at(job_id)
            if created is None:  # an ID from before time-ordered IDs: ask the manifest
                try:
                    manifest = as_manifest(self.storage.get_json(layout.manifest_key(job_id)))
                    created = float(manifest["created_at"])
                except (ObjectNotFound, RecordError, ValueError, TypeError):
                    created = None
            ages[job_id] = created
        created = ages[job_id]
        return created is not None and created < cutoff

    def _stopped_workers(self, cutoff: float) -> list[str]:
        old = []
        for key in self.storage.list(layout.WORKERS):
            if not layout.is_worker_record(key):
                continue
            try:
                record = as_health(self.storage.get_json(key))
            except (ObjectNotFound, RecordError):
                continue
            updated_at = record.get("updated_at")
            if record.get("state") == "stopped" and updated_at is not None and updated_at < cutoff:
                old.append(key)  # a record without a time is never deleted on a guess
        return old

    def _purged_leftovers(self) -> list[str]:
        """Results a worker wrote for a job after it was purged (it was mid-batch)."""
        leftovers: list[str] = []
        for key, job_id in layout.iter_job_ids(self.storage.list(layout.CANCELLED), 1):
            try:
                marker = as_cancel_marker(self.storage.get_json(key))
            except (ObjectNotFound, RecordError):
                continue
            if marker["purged"]:
                for prefix in layout.job_prefixes(job_id):
                    leftovers += self.storage.list(prefix)
        return leftovers

    def _old_idempotency(self, now: float) -> list[str]:
        ttl = (
            IDEMPOTENCY_TTL_S if self.retention_s <= 0 else min(IDEMPOTENCY_TTL_S, self.retention_s)
        )
        old = []
        for key in self.storage.list(layout.IDEMPOTENCY):
            try:  # a claim, a record or a takeover marker: each says when it was made
                created_at = idempotency_created_at(self.storage.get_json(key))
            except ObjectNotFound:
                continue
            except RecordError:  # not a record this version reads: nobody ever will
                old.append(key)
                continue
            if created_at < now - ttl:
                old.append(key)
        return old

    def _delete(self, keys: list[str]) -> int:
        for key in keys:
            self.storage.delete(key)
        return len(keys)
