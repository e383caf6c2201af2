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
from typing import Any

from dlaas import protocol
from dlaas.errors import ObjectNotFound
from dlaas.lifecycle.catalog import owner_digest
from dlaas.queue.base import Queue
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.lifecycle")

IDEMPOTENCY_TTL_S = 24 * 3600.0
MAX_KEY_LENGTH = 255


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


class IdempotencyStore:
    def __init__(self, storage: Storage, queue: Queue, *, ttl_s: float = IDEMPOTENCY_TTL_S) -> None:
        self.storage = storage
        self.queue = queue
        self.ttl_s = ttl_s

    def lookup(self, owner: str, key: str) -> dict[str, Any] | None:
        """The live record for ``key``, or None (none, expired, or its job is not stored)."""
        try:
            record = dict(self.storage.get_json(record_key(owner, key)))
        except ObjectNotFound:
            return None
        if record.get("created_at", 0.0) < time.time() - self.ttl_s:
            return None
        if not self.storage.exists(protocol.manifest_key(record["job_id"])):
            # The first request died before its job was whole, or the job was purged or
            # expired since: this request starts afresh.
            return None
        return record

    def save(self, owner: str, key: str, *, job_id: str, files: str, body: dict[str, Any]) -> str:
        """Write the record before anything is enqueued; return its storage key."""
        where = record_key(owner, key)
        record = {
            "job_id": job_id,
            "files": files,
            "body": body,
            "created_at": time.time(),
            "enqueued": False,
        }
        self.storage.put_json(where, record)
        return where

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
