"""``Idempotency-Key`` on ``POST /v1/jobs``: a retry gets the first answer, not a second job.

A request first *claims* its key with a create-if-absent write (``Storage.put_if_absent``),
before it reads or stores anything, as the IETF Idempotency-Key draft and Stripe do: of
several requests with one key, on any number of web processes sharing the store, exactly
one wins. A concurrent duplicate is told the first is in progress (409, ``Retry-After``);
once the first has stored its job, a retry gets the first answer.

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
from typing import Any, Literal

from dlaas import protocol
from dlaas.errors import DlaasError, ObjectNotFound
from dlaas.lifecycle.catalog import owner_digest
from dlaas.queue.base import Queue
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.lifecycle")

IDEMPOTENCY_TTL_S = 24 * 3600.0
MAX_KEY_LENGTH = 255
# A claim with no stored job after this long is taken to be a dead process's and is
# taken over; a live request slower than this loses its key (409) to the retry.
CLAIM_TIMEOUT_S = 60.0
CLAIM_RETRY_AFTER_S = 1.0
CLAIM_ATTEMPTS = 3


def record_key(owner: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"idempotency/{owner_digest(owner)}/{digest}.json"


@dataclass
class FilesDigest:
    """What "the same files" means: the same names and bytes, in the same order."""

    _hash: Any = field(default_factory=hashlib.sha256)

    def add(self, filename: str, data: bytes | None) -> None:
        content = hashlib.sha256(data).hexdigest() if data is not None else "refused"
        self._hash.update(f"{len(filename)}:{filename}:{content};".encode())

    def hexdigest(self) -> str:
        return str(self._hash.hexdigest())


ClaimOutcome = Literal["won", "earlier", "in_progress"]


@dataclass(frozen=True)
class Claim:
    """What claiming a key gave: ``won`` (go ahead; ``claim_id`` is ours), ``earlier``
    (a stored job answers it: ``record``), or ``in_progress`` (another request holds it)."""

    outcome: ClaimOutcome
    claim_id: str = ""
    record: dict[str, Any] | None = None
    retry_after_s: float = 0.0


class ClaimLost(DlaasError):
    """Our claim was taken over (we were slower than ``claim_timeout_s``); another
    request now answers for the key."""


class IdempotencyStore:
    def __init__(
        self,
        storage: Storage,
        queue: Queue,
        *,
        ttl_s: float = IDEMPOTENCY_TTL_S,
        claim_timeout_s: float = CLAIM_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.ttl_s = ttl_s
        self.claim_timeout_s = claim_timeout_s
        self.clock = clock

    def claim(self, owner: str, key: str) -> Claim:
        """Claim ``key`` for a new request before anything is stored (see the module doc)."""
        where = record_key(owner, key)
        for _ in range(CLAIM_ATTEMPTS):
            claim_id = protocol.new_id()
            mine = {"claim_id": claim_id, "created_at": self.clock(), "job_id": None}
            if self.storage.put_json_if_absent(where, mine):
                return Claim("won", claim_id)
            try:
                record = dict(self.storage.get_json(where))
            except ObjectNotFound:
                continue  # released or swept since: claim it afresh
            state = self._state(record)
            if state == "live":
                return Claim("earlier", record=record)
            if state == "busy":
                return Claim("in_progress", retry_after_s=CLAIM_RETRY_AFTER_S)
            if self._take_over(where, record, mine):
                return Claim("won", claim_id)
            return Claim("in_progress", retry_after_s=CLAIM_RETRY_AFTER_S)
        return Claim("in_progress", retry_after_s=CLAIM_RETRY_AFTER_S)

    def _state(self, record: dict[str, Any]) -> Literal["live", "busy", "dead"]:
        """``live``: its job is stored and answers; ``busy``: a request is still at work
        (or died less than ``claim_timeout_s`` ago); ``dead``: expired or abandoned."""
        age_s = self.clock() - float(record.get("created_at", 0.0))
        if age_s > self.ttl_s:
            return "dead"
        job_id = record.get("job_id")
        if job_id and self.storage.exists(protocol.manifest_key(job_id)):
            return "live"
        # No job yet, or its manifest is not written (the job is being committed, its
        # process died before, or it was purged since): wait for the claim's timeout.
        return "busy" if age_s < self.claim_timeout_s else "dead"

    def _take_over(self, where: str, dead: dict[str, Any], mine: dict[str, Any]) -> bool:
        """Replace a dead claim with ours; of racing takers, the one that creates the
        dead claim's takeover marker wins."""
        dead_id = str(dead.get("claim_id") or dead.get("job_id") or "legacy")
        marker = f"{where.removesuffix('.json')}.takeover-{dead_id}.json"
        if not self.storage.put_json_if_absent(marker, {"created_at": self.clock()}):
            return False
        self.storage.put_json(where, mine)
        log.info("idempotency_claim_taken_over", extra={"dead_claim": dead_id})
        return True

    def save(
        self,
        owner: str,
        key: str,
        claim_id: str,
        *,
        job_id: str,
        files: str,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        """Turn our claim into the key's record, before anything is enqueued; return it.

        Raises ClaimLost if another request took the claim over meanwhile.
        """
        where = record_key(owner, key)
        self._check_ours(where, claim_id)
        record = {
            "claim_id": claim_id,
            "job_id": job_id,
            "files": files,
            "body": body,
            "created_at": self.clock(),
            "enqueued": False,
        }
        self.storage.put_json(where, record)
        return record

    def release(self, owner: str, key: str, claim_id: str) -> None:
        """Drop our claim (the request failed before storing its job), so a retry may go."""
        where = record_key(owner, key)
        try:
            self._check_ours(where, claim_id)
        except (ClaimLost, ObjectNotFound):
            return
        self.storage.delete(where)

    def _check_ours(self, where: str, claim_id: str) -> None:
        current = self.storage.get_json(where)
        if current.get("claim_id") != claim_id:
            raise ClaimLost(
                "another request took over this Idempotency-Key while this one was running"
            )

    def mark_enqueued(self, owner: str, key: str, record: dict[str, Any]) -> None:
        self.storage.put_json(record_key(owner, key), {**record, "enqueued": True})

    def finish_enqueue(
        self, owner: str, key: str, record: dict[str, Any], reply_to: str | None
    ) -> int:
        """Enqueue what a crashed first request may not have; return the tasks sent."""
        if record.get("enqueued"):
            return 0
        job_id = record["job_id"]
        manifest = protocol.as_manifest(self.storage.get_json(protocol.manifest_key(job_id)))
        done = {
            k.rsplit("/", 1)[1].removesuffix(".json")
            for k in self.storage.list(protocol.results_prefix(job_id))
        }
        now = time.time()
        tasks = [
            protocol.Task(
                job_id=job_id,
                image_id=image["image_id"],
                key=protocol.input_key(job_id, image["image_id"]),
                reply_to=reply_to,
                enqueued_at=now,
                progress=True,
            ).to_json()
            for image in manifest["images"]
            if image["image_id"] not in done
        ]
        if tasks:
            self.queue.send_batch(tasks)
        self.mark_enqueued(owner, key, record)
        log.info("idempotent_resume", extra={"job_id": job_id, "enqueued": len(tasks)})
        return len(tasks)
