"""``Idempotency-Key`` on ``POST /v1/jobs``: a retry gets the first answer, not a second job.

A request first *claims* its key with a create-if-absent write (``JobStore.create_record``
over ``Storage.put_if_absent``), before it reads or stores anything, as the IETF
Idempotency-Key draft and Stripe do: of several requests with one key, on any number of
web processes sharing the store, exactly one wins. A concurrent duplicate is told the
first is in progress (409, ``Retry-After``); once the first has stored its job, a retry
gets the first answer.

The winner turns its claim into the key's record before the job's tasks are enqueued,
and marks it ``enqueued`` after. A retry that finds a record still unmarked (its process
died between the two) enqueues the images that have no result yet, so the job runs once
it is answered for. A crash after the enqueue and before the mark can thus send an image
twice; results are idempotent (the same key is overwritten), so that costs a second
inference, never a second result. A claim whose process died before its job was stored
is taken over after ``claim_timeout_s``; one takeover marker per dead claim, itself
created if absent, keeps two processes from taking over the same claim.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from dlaas.errors import DlaasError, ObjectNotFound
from dlaas.jobs import layout
from dlaas.jobs.records import (
    AcceptedBody,
    IdempotencyClaim,
    IdempotencyRecord,
    TakeoverMarker,
    as_idempotency_entry,
)
from dlaas.jobs.store import JobStore, PendingJob

if TYPE_CHECKING:
    from hashlib import _Hash

log = logging.getLogger("dlaas.jobs")

IDEMPOTENCY_TTL_S = 24 * 3600.0
MAX_KEY_LENGTH = 255
# A claim with no stored job after this long is taken to be a dead process's and is
# taken over; a live request slower than this loses its key (409) to the retry.
CLAIM_TIMEOUT_S = 60.0
CLAIM_RETRY_AFTER_S = 1.0
CLAIM_ATTEMPTS = 3


@dataclass
class FilesDigest:
    """What "the same files" means: the same names and bytes, in the same order."""

    _hash: _Hash = field(default_factory=hashlib.sha256)

    def add(self, filename: str, data: bytes | None) -> None:
        content = hashlib.sha256(data).hexdigest() if data is not None else "refused"
        self._hash.update(f"{len(filename)}:{filename}:{content};".encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


ClaimOutcome = Literal["won", "earlier", "in_progress"]


@dataclass(frozen=True)
class Claim:
    """What claiming a key gave: ``won`` (go ahead; ``claim_id`` is ours), ``earlier``
    (a stored job answers it: ``record``), or ``in_progress`` (another request holds it)."""

    outcome: ClaimOutcome
    claim_id: str = ""
    record: IdempotencyRecord | None = None
    retry_after_s: float = 0.0


class ClaimLost(DlaasError):
    """Our claim was taken over (we were slower than ``claim_timeout_s``); another
    request now answers for the key."""


class IdempotencyStore:
    def __init__(
        self,
        jobs: JobStore,
        *,
        ttl_s: float = IDEMPOTENCY_TTL_S,
        claim_timeout_s: float = CLAIM_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.jobs = jobs
        self.storage = jobs.storage
        self.ttl_s = ttl_s
        self.claim_timeout_s = claim_timeout_s
        self.clock = clock

    def claim(self, owner: str, key: str) -> Claim:
        """Claim ``key`` for a new request before anything is stored (see the module doc)."""
        where = layout.idempotency_key(owner, key)
        busy = Claim("in_progress", retry_after_s=CLAIM_RETRY_AFTER_S)
        for _ in range(CLAIM_ATTEMPTS):
            mine: IdempotencyClaim = {
                "claim_id": layout.new_id(),
                "created_at": self.clock(),
                "job_id": None,
            }
            if self.jobs.create_record(where, mine):
                return Claim("won", mine["claim_id"])
            try:
                entry = as_idempotency_entry(self.storage.get_json(where))
            except ObjectNotFound:
                continue  # released or swept since: claim it afresh
            state = self._state(entry)
            if state == "live" and entry["job_id"] is not None:
                return Claim("earlier", record=entry)
            if state == "dead" and self._take_over(owner, key, entry, mine):
                return Claim("won", mine["claim_id"])
            return busy
        return busy

    def _state(
        self, entry: IdempotencyClaim | IdempotencyRecord
    ) -> Literal["live", "busy", "dead"]:
        """``live``: its job is stored and answers; ``busy``: a request is still at work
        (or died less than ``claim_timeout_s`` ago); ``dead``: expired or abandoned."""
        age_s = self.clock() - float(entry.get("created_at", 0.0))
        if age_s > self.ttl_s:
            return "dead"
        job_id = entry["job_id"]
        if job_id and self.storage.exists(layout.manifest_key(job_id)):
            return "live"
        # No job yet, or its manifest is not written (the job is being committed, its
        # process died before, or it was purged since): wait for the claim's timeout.
        return "busy" if age_s < self.claim_timeout_s else "dead"

    def _take_over(
        self,
        owner: str,
        key: str,
        dead: IdempotencyClaim | IdempotencyRecord,
        mine: IdempotencyClaim,
    ) -> bool:
        """Replace a dead claim with ours; of racing takers, the one that creates the
        dead claim's takeover marker wins."""
        dead_id = str(dead.get("claim_id") or dead["job_id"] or "legacy")
        marker: TakeoverMarker = {"created_at": self.clock()}
        if not self.jobs.create_record(
            layout.idempotency_takeover_key(owner, key, dead_id), marker
        ):
            return False
        self.storage.put_json(layout.idempotency_key(owner, key), mine)
        log.info("idempotency_claim_taken_over", extra={"dead_claim": dead_id})
        return True

    def save(
        self, job: PendingJob, key: str, claim_id: str, *, files: str, body: AcceptedBody
    ) -> IdempotencyRecord:
        """Turn our claim into the key's record, before anything is enqueued (an abort
        removes it); return it. Raises ClaimLost if another request took the claim over."""
        self._check_ours(job.owner, key, claim_id)
        record: IdempotencyRecord = {
            "claim_id": claim_id,
            "job_id": job.job_id,
            "files": files,
            "body": body,
            "created_at": self.clock(),
            "enqueued": False,
        }
        self.jobs.put_record(job, layout.idempotency_key(job.owner, key), record)
        return record

    def release(self, owner: str, key: str, claim_id: str) -> None:
        """Drop our claim (the request failed before storing its job), so a retry may go."""
        try:
            self._check_ours(owner, key, claim_id)
        except (ClaimLost, ObjectNotFound):
            return
        self.storage.delete(layout.idempotency_key(owner, key))

    def _check_ours(self, owner: str, key: str, claim_id: str) -> None:
        current = as_idempotency_entry(self.storage.get_json(layout.idempotency_key(owner, key)))
        if current.get("claim_id") != claim_id:
            raise ClaimLost(
                "another request took over this Idempotency-Key while this one was running"
            )

    def mark_enqueued(self, owner: str, key: str, record: IdempotencyRecord) -> None:
        done: IdempotencyRecord = {**record, "enqueued": True}
        self.storage.put_json(layout.idempotency_key(owner, key), done)

    def finish_enqueue(
        self, owner: str, key: str, record: IdempotencyRecord, reply_to: str | None
    ) -> int:
        """Enqueue what a crashed first request may not have; return the tasks sent."""
        if record.get("enqueued"):
            return 0
        job_id = record["job_id"]
        manifest = self.jobs.manifest(job_id)
        done = self.jobs.result_ids(job_id)
        missing = [] if manifest is None else [i["image_id"] for i in manifest["images"]]
        sent = self.jobs.enqueue(
            job_id, [i for i in missing if i not in done], reply_to, progress=True
        )
        self.mark_enqueued(owner, key, record)
        log.info("idempotent_resume", extra={"job_id": job_id, "enqueued": sent})
        return sent
