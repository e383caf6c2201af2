"""The retention janitor: removes jobs older than ``--retention-h`` from the store.

It tells a job's age from its ID (``protocol.job_created_at``), so a sweep lists keys
and reads nothing but the manifests of jobs stored before IDs carried their time.
Deleting is idempotent, so several processes may sweep at once; a lease in
``janitor/lease.json`` only spares them the duplicate work. It also removes what late
workers wrote for purged jobs, idempotency records past their 24 h, and the records of
workers that stopped longer ago than the retention.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from dlaas import protocol
from dlaas.errors import DlaasError, ObjectNotFound
from dlaas.lifecycle.catalog import iter_job_ids
from dlaas.lifecycle.idempotency import IDEMPOTENCY_TTL_S
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.janitor")

LEASE_KEY = "janitor/lease.json"
# (prefix, position of the job ID among the key's segments)
JOB_KEYS = (
    ("jobs/", 1),
    ("inputs/", 1),
    ("results/", 1),
    ("webhooks/", 1),
    ("owners/", 2),
    ("cancelled/", 1),  # last: the tombstone outlives the objects it guards
)


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
            lease = self.storage.get_json(LEASE_KEY)
        except ObjectNotFound:
            lease = {}
        if lease.get("holder") not in (None, self.name) and lease.get("until", 0) > now:
            return False
        self.storage.put_json(
            LEASE_KEY, {"holder": self.name, "until": now + self.interval_s * 0.9}
        )
        return True

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many objects of each kind it deleted."""
        now = self.clock()
        removed: dict[str, int] = {}
        if self.retention_s > 0:
            cutoff = now - self.retention_s
            ages: dict[str, float | None] = {}
            for prefix, position in JOB_KEYS:
                keys = self.storage.list(prefix)
                old = [k for k, j in iter_job_ids(keys, position) if self._age(j, ages, cutoff)]
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
            created = protocol.job_created_at(job_id)
            if created is None:  # an ID from before time-ordered IDs: ask the manifest
                try:
                    created = float(
                        self.storage.get_json(protocol.manifest_key(job_id))["created_at"]
                    )
                except (ObjectNotFound, KeyError, ValueError, TypeError):
                    created = None
            ages[job_id] = created
        created = ages[job_id]
        return created is not None and created < cutoff

    def _stopped_workers(self, cutoff: float) -> list[str]:
        old = []
        for key in self.storage.list("workers/"):
            if not key.endswith(".json"):
                continue
            try:
                record = self.storage.get_json(key)
            except ObjectNotFound:
                continue
            updated_at = record.get("updated_at")
            if record.get("state") == "stopped" and updated_at is not None and updated_at < cutoff:
                old.append(key)  # a record without a time is never deleted on a guess
        return old

    def _purged_leftovers(self) -> list[str]:
        """Results a worker wrote for a job after it was purged (it was mid-batch)."""
        leftovers: list[str] = []
        for key, job_id in iter_job_ids(self.storage.list("cancelled/"), 1):
            try:
                marker = self.storage.get_json(key)
            except ObjectNotFound:
                continue
            if marker.get("purged"):
                leftovers += self.storage.list(f"inputs/{job_id}/")
                leftovers += self.storage.list(protocol.results_prefix(job_id))
        return leftovers

    def _old_idempotency(self, now: float) -> list[str]:
        ttl = (
            IDEMPOTENCY_TTL_S if self.retention_s <= 0 else min(IDEMPOTENCY_TTL_S, self.retention_s)
        )
        old = []
        for key in self.storage.list("idempotency/"):
            try:
                record: dict[str, Any] = self.storage.get_json(key)
            except ObjectNotFound:
                continue
            if record.get("created_at", 0.0) < now - ttl:
                old.append(key)
        return old

    def _delete(self, keys: list[str]) -> int:
        for key in keys:
            self.storage.delete(key)
        return len(keys)
