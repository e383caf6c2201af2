"""``Idempotency-Key`` on ``POST /v1/jobs``: a retry gets the first answer, not a second job.

The key's record is stored before the job's tasks are enqueued and marked ``enqueued``
after. A retry that finds a record still unmarked (its process died between the two)
enqueues the images that have no result yet, so the job runs once it is answered for.
A crash after the enqueue and before the mark can thus send an image twice; results are
idempotent (the same key is overwritten), so that costs a second inference, never a
second result.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dlaas.errors import ObjectNotFound
from dlaas.jobs import layout
from dlaas.jobs.records import AcceptedBody, IdempotencyRecord, as_idempotency
from dlaas.jobs.store import JobStore, PendingJob

if TYPE_CHECKING:
    from hashlib import _Hash

log = logging.getLogger("dlaas.jobs")

IDEMPOTENCY_TTL_S = 24 * 3600.0
MAX_KEY_LENGTH = 255


@dataclass
class FilesDigest:
    """What "the same files" means: the same names and bytes, in the same order."""

    _hash: _Hash = field(default_factory=hashlib.sha256)

    def add(self, filename: str, data: bytes | None) -> None:
        content = hashlib.sha256(data).hexdigest() if data is not None else "refused"
        self._hash.update(f"{len(filename)}:{filename}:{content};".encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class IdempotencyStore:
    def __init__(self, jobs: JobStore, *, ttl_s: float = IDEMPOTENCY_TTL_S) -> None:
        self.jobs = jobs
        self.storage = jobs.storage
        self.ttl_s = ttl_s

    def lookup(self, owner: str, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``, or None (none, expired, or its job is not stored)."""
        try:
            record = as_idempotency(self.storage.get_json(layout.idempotency_key(owner, key)))
        except ObjectNotFound:
            return None
        if record.get("created_at", 0.0) < time.time() - self.ttl_s:
            return None
        if not self.storage.exists(layout.manifest_key(record["job_id"])):
            # The first request died before its job was whole, or the job was purged or
            # expired since: this request starts afresh.
            return None
        return record

    def save(
        self, job: PendingJob, key: str, *, files: str, body: AcceptedBody
    ) -> IdempotencyRecord:
        """Write the record before anything is enqueued (an abort removes it)."""
        record: IdempotencyRecord = {
            "job_id": job.job_id,
            "files": files,
            "body": body,
            "created_at": time.time(),
            "enqueued": False,
        }
        self.jobs.put_record(job, layout.idempotency_key(job.owner, key), record)
        return record

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
