"""The job catalog on the object store: the per-owner index, paging newest first,
cancelling and purging.

Job IDs start with their creation time (``protocol.new_job_id``), so listing keys is
listing jobs in age order; a page reads only the manifests it returns.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from dlaas import protocol
from dlaas.errors import DlaasError, ObjectNotFound
from dlaas.keys import ANONYMOUS
from dlaas.lifecycle.status import owner_of
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.lifecycle")

MAX_PAGE = 100


def owner_digest(owner: str) -> str:
    """Owners may hold characters that keys may not (``@``), so the index uses a digest."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def owner_index_key(owner: str, job_id: str) -> str:
    return f"owners/{owner_digest(owner)}/{job_id}"


def job_prefixes(job_id: str) -> tuple[str, ...]:
    """Prefixes holding a job's many objects (inputs and results)."""
    return (f"inputs/{job_id}/", protocol.results_prefix(job_id))


def sort_key(job_id: str) -> tuple[float, str]:
    """Newest first; IDs from before time-ordered IDs sort after every newer one."""
    return (protocol.job_created_at(job_id) or 0.0, job_id)


class JobCatalog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def remember_owner(self, owner: str, job_id: str) -> str | None:
        """Index the job under its owner before it is enqueued; return the key written."""
        if owner == ANONYMOUS:
            return None  # without API keys the list is every job: no index needed
        key = owner_index_key(owner, job_id)
        self.storage.put(key, b"")
        return key

    def job_ids(self, owner: str) -> list[str]:
        """The owner's job IDs, newest first (every job's when the owner is anonymous)."""
        if owner == ANONYMOUS:
            keys = self.storage.list("jobs/")
            ids = [k[5:-5] for k in keys if k.endswith(".json") and k.count("/") == 1]
        else:
            ids = [k.rsplit("/", 1)[1] for k in self.storage.list(f"owners/{owner_digest(owner)}/")]
        return sorted(ids, key=sort_key, reverse=True)

    def page(
        self, owner: str, *, limit: int, cursor: str | None
    ) -> tuple[list[protocol.JobManifest], str | None]:
        """Up to ``limit`` manifests after ``cursor`` (a job ID), and the next cursor.

        A job purged or expired between the listing and the read is left out, not an error.
        """
        ids = self.job_ids(owner)
        if cursor is not None:
            after = sort_key(cursor)
            ids = [i for i in ids if sort_key(i) < after]
        manifests: list[protocol.JobManifest] = []
        for position, job_id in enumerate(ids):
            manifest = self.manifest(job_id)
            if manifest is None or (owner != ANONYMOUS and owner_of(manifest) != owner):
                continue
            manifests.append(manifest)
            if len(manifests) == limit:
                more = position < len(ids) - 1
                return manifests, (job_id if more else None)
        return manifests, None

    def manifest(self, job_id: str) -> protocol.JobManifest | None:
        try:
            return protocol.as_manifest(self.storage.get_json(protocol.manifest_key(job_id)))
        except ObjectNotFound:
            return None

    def cancel_marker(self, job_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.storage.get_json(protocol.cancel_key(job_id)))
        except ObjectNotFound:
            return None

    def cancel(self, job_id: str, *, purge: bool = False) -> None:
        """Mark the job cancelled: workers drop its messages from now on.

        With ``purge`` the marker says so (workers then write nothing for it) and every
        object of the job goes; the marker stays until retention, as a tombstone that
        keeps late workers from writing results for a job that no longer exists.
        """
        self.storage.put_json(
            protocol.cancel_key(job_id), {"cancelled_at": time.time(), "purged": purge}
        )
        log.info("job_cancelled", extra={"job_id": job_id, "purge": purge})
        if purge:
            self.remove(job_id, keep_marker=True)

    def remove(self, job_id: str, *, keep_marker: bool = False, owner: str | None = None) -> int:
        """Delete every object of the job, manifest first (so GET answers 404 at once)."""
        keys = [protocol.manifest_key(job_id), protocol.webhook_key(job_id)]
        if owner is not None and owner != ANONYMOUS:
            keys.append(owner_index_key(owner, job_id))
        for prefix in job_prefixes(job_id):
            keys.extend(self.storage.list(prefix))
        if not keep_marker:
            keys.append(protocol.cancel_key(job_id))
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


def iter_job_ids(keys: list[str], position: int) -> Iterator[tuple[str, str]]:
    """``(key, job_id)`` for keys whose ``position``-th segment is a job ID."""
    for key in keys:
        parts = key.split("/")
        if len(parts) > position:
            job_id = parts[position].removesuffix(".json")
            if len(job_id) == 32:
                yield key, job_id
