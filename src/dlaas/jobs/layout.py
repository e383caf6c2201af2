"""Where everything of dlaas lives in the object store, and the rules of its IDs.

Every key family is spelled here and nowhere else, so "what is in the bucket?" has one
answer (docs/architecture.md, "Storage layout"). The families, by prefix:

- ``jobs/<job>.json``: the manifest (its presence is the job);
- ``inputs/<job>/<image>``: an uploaded image, until its result is settled;
  ``inputs/<job>`` alone for a job of one image (a synchronous call), so that on a local
  disk its image costs one file and no folder;
- ``results/<job>/<image>.json``: a result record;
- ``cancelled/<job>.json``: the cancel marker (a tombstone when purged);
- ``webhooks/<job>.json``: the completion webhook still owed (the outbox);
- ``owners/<owner digest>/<job>``: the per-owner index (empty objects);
- ``listings/<job>.json``: a job over a source: its listing cursor, count and phase;
  ``listings/<job>/page-<n>.json`` beside it: each page of source keys it enqueued, in
  key order (the output is written from them), and ``listings/<job>/claim-<n>``: which
  claim on the listing is current (a web process that takes over a dead one's creates it);
- ``idempotency/<owner digest>/<key digest>.json``: an ``Idempotency-Key`` claim, then
  its record; ``<key digest>.takeover-<claim>.json`` beside it: one dead claim taken over;
- ``workers/<worker>.json`` and ``workers/<worker>.drain``: health and drain request;
- ``replies/<reply queue>.json``: a web process's reply queue, refreshed while alive;
- ``janitor/lease.json``: which process sweeps now;
- ``probes/<id>``: written and removed at start-up, to test the store's create-if-absent.

Job IDs start with their creation time (``new_job_id``), so listing keys is listing jobs
in age order, and the janitor tells a job's age without reading anything.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator

JOBS = "jobs/"
INPUTS = "inputs/"
RESULTS = "results/"
CANCELLED = "cancelled/"
WEBHOOKS = "webhooks/"
OWNERS = "owners/"
IDEMPOTENCY = "idempotency/"
WORKERS = "workers/"
REPLIES = "replies/"
JANITOR_LEASE = "janitor/lease.json"
PROBES = "probes/"
LISTINGS = "listings/"
READINESS_PROBE = "jobs/readyz-probe"  # never written: ``exists`` on it proves the store answers

# The families holding a job's objects, with the position of the job ID among a key's
# segments. Cancel markers come last: the tombstone outlives the objects it guards.
JOB_FAMILIES: tuple[tuple[str, int], ...] = (
    (JOBS, 1),
    (INPUTS, 1),
    (RESULTS, 1),
    (WEBHOOKS, 1),
    (OWNERS, 2),
    (LISTINGS, 1),
    (CANCELLED, 1),
)

ID_LENGTH = 32


# IDs ------------------------------------------------------------------------------


def new_id() -> str:
    """A 32-hex-character random ID, safe as a storage-key segment (128 random bits:
    ``secrets`` is 3x cheaper than building a ``uuid.UUID``, and IDs are made per image)."""
    return secrets.token_hex(16)


def new_job_id() -> str:
    """A 32-hex job ID that starts with its creation time (the UUIDv7 layout).

    IDs then sort by age, so ``GET /v1/jobs`` pages newest first and the janitor tells a
    job's age from its keys alone, without reading its manifest.
    """
    ms = int(time.time() * 1000) & (2**48 - 1)
    rand = secrets.randbits(128)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & (2**62 - 1))
    return f"{value:032x}"


def is_job_id(value: str) -> bool:
    """32 lowercase hex digits: what every job ID is, and all a key segment may be."""
    return len(value) == ID_LENGTH and all(c in "0123456789abcdef" for c in value)


def job_created_at(job_id: str) -> float | None:
    """Creation time (epoch s) of an ID from ``new_job_id``; None for older random IDs."""
    if len(job_id) != ID_LENGTH or job_id[12] != "7" or job_id[16] not in "89ab":
        return None
    try:
        return int(job_id[:12], 16) / 1000.0
    except ValueError:
        return None


def sort_key(job_id: str) -> tuple[float, str]:
    """Newest first; IDs from before time-ordered IDs sort after every newer one."""
    return (job_created_at(job_id) or 0.0, job_id)


def owner_digest(owner: str) -> str:
    """Owners may hold characters that keys may not (``@``), so keys use a digest."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


# A job's keys ---------------------------------------------------------------------


def manifest_key(job_id: str) -> str:
    return f"{JOBS}{job_id}.json"


def input_key(job_id: str, image_id: str, *, one_image: bool = False) -> str:
    """Where an upload waits; ``one_image``: the job has this image only, which is then
    stored under the job's own key (no folder to create and remove on a local disk)."""
    return f"{INPUTS}{job_id}" if one_image else f"{INPUTS}{job_id}/{image_id}"


def inputs_prefix(job_id: str) -> str:
    return f"{INPUTS}{job_id}/"


def result_key(job_id: str, image_id: str) -> str:
    return f"{RESULTS}{job_id}/{image_id}.json"


def results_prefix(job_id: str) -> str:
    return f"{RESULTS}{job_id}/"


def image_of_result(key: str) -> str:
    """The image ID in a ``result_key``."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def cancel_key(job_id: str) -> str:
    """Present = the job is cancelled; workers skip its messages."""
    return f"{CANCELLED}{job_id}.json"


def webhook_key(job_id: str) -> str:
    """A completion webhook still owed for the job (the outbox record)."""
    return f"{WEBHOOKS}{job_id}.json"


def job_of_webhook(key: str) -> str:
    return key.removeprefix(WEBHOOKS).removesuffix(".json")


def owner_prefix(owner: str) -> str:
    return f"{OWNERS}{owner_digest(owner)}/"


def owner_index_key(owner: str, job_id: str) -> str:
    return f"{owner_prefix(owner)}{job_id}"


def job_of_manifest(key: str) -> str | None:
    """The job ID of a ``manifest_key``; None for any other key under ``jobs/``."""
    if key.endswith(".json") and key.count("/") == 1:
        return key[len(JOBS) : -len(".json")]
    return None


def job_prefixes(job_id: str) -> tuple[str, ...]:
    """Prefixes holding a job's many objects (inputs, results, listing pages)."""
    return (inputs_prefix(job_id), results_prefix(job_id), f"{LISTINGS}{job_id}/")


def job_single_keys(job_id: str) -> tuple[str, ...]:
    """A job's objects that sit under no prefix of its own; a purge deletes them too."""
    return (
        manifest_key(job_id),
        webhook_key(job_id),
        listing_key(job_id),
        input_key(job_id, "", one_image=True),
    )


# A job over a source (a bucket prefix or folder) ---------------------------------


def source_image_id(key: str) -> str:
    """A source key's image ID: the same key always gives the same ID, so a listing that
    resumes after a crash finds what it enqueued before, and a result never doubles."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:ID_LENGTH]


def listing_key(job_id: str) -> str:
    return f"{LISTINGS}{job_id}.json"


def job_of_listing(key: str) -> str | None:
    """The job ID of a ``listing_key``; None for the pages and claims beside it."""
    if key.count("/") == 1 and key.endswith(".json"):
        job_id = key[len(LISTINGS) : -len(".json")]
        return job_id if is_job_id(job_id) else None
    return None


def listing_page_key(job_id: str, page: int) -> str:
    """The ``page``-th page (from 0) of keys enqueued; the number sorts as it counts."""
    return f"{LISTINGS}{job_id}/page-{page:09d}.json"


def listing_claim_key(job_id: str, generation: int) -> str:
    return f"{LISTINGS}{job_id}/claim-{generation:09d}"


def output_key(job_id: str) -> str:
    """The job's JSON Lines file, under the output folder the job names."""
    return f"{job_id}.jsonl"


def iter_job_ids(keys: list[str], position: int) -> Iterator[tuple[str, str]]:
    """``(key, job_id)`` for keys whose ``position``-th segment is a job ID."""
    for key in keys:
        parts = key.split("/")
        if len(parts) > position:
            job_id = parts[position].removesuffix(".json")
            if len(job_id) == ID_LENGTH:
                yield key, job_id


# Other records --------------------------------------------------------------------


def idempotency_key(owner: str, key: str) -> str:
    """Where an ``Idempotency-Key``'s record lives; the key itself may be any ASCII."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"{IDEMPOTENCY}{owner_digest(owner)}/{digest}.json"


def idempotency_takeover_key(owner: str, key: str, dead_claim: str) -> str:
    """The marker whose create-if-absent lets one process take over a dead claim."""
    record = idempotency_key(owner, key).removesuffix(".json")
    return f"{record}.takeover-{dead_claim}.json"


def probe_key() -> str:
    """A fresh key for the start-up check of the store's create-if-absent."""
    return f"{PROBES}if-none-match-{new_id()}"


def worker_key(worker_id: str) -> str:
    """The worker's health record, read by launchers and the stats endpoint."""
    return f"{WORKERS}{worker_id}.json"


def drain_key(worker_id: str) -> str:
    """If this object exists, the worker finishes the batch in hand and exits."""
    return f"{WORKERS}{worker_id}.drain"


def is_worker_record(key: str) -> bool:
    return key.startswith(WORKERS) and key.endswith(".json")


def reply_queue_key(queue_name: str) -> str:
    """A web process's reply queue, refreshed while the process lives."""
    return f"{REPLIES}{queue_name}.json"
