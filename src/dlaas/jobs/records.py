"""The typed records dlaas stores, one codec each: what crosses processes through storage.

Each record is a ``TypedDict`` (it is JSON on the wire, and orjson writes a dict with no
conversion) with one ``as_<record>`` that checks a value read back before anyone trusts
it. States are ``Literal``s, so a branch on a state nobody writes is a type error.
Where each lives is ``dlaas.jobs.layout``; who writes each is docs/architecture.md.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict, TypeVar, cast

from dlaas.errors import StorageError
from dlaas.keys import ANONYMOUS

if TYPE_CHECKING:
    from numpy.typing import NDArray

    # The model's answer, stored unchanged; a type only, so that reading a record never
    # imports the model package.
    from dlaas.model.spec import Prediction

ResultStatus = Literal["done", "failed", "cancelled"]
SCORES_DTYPE = "<f4"  # numpy's name for the dtype of a result record's ``probabilities``
WorkerHealth = Literal["starting", "idle", "busy", "stopped"]
"""``state`` in a worker's health record. A worker asked to drain keeps reporting ``idle``
or ``busy`` until it exits (``stopped``, with an ``exit_reason``): draining is what a
launcher sees (``WorkerState.DRAINING``), never what a worker writes."""
WebhookState = Literal["pending", "gave_up"]
SourceKind = Literal["prefix", "manifest"]
ListingPhase = Literal["listing", "waiting", "written"]
"""A job over a source: ``listing`` while keys are enqueued page by page, ``waiting`` for
the last result once all are, ``written`` once the output file is stored."""


class RecordError(StorageError):
    """A stored record is not the shape this version writes (corrupt or foreign)."""


class ResultRecord(TypedDict):
    """One image's outcome at ``result_key`` (and inside a final reply)."""

    job_id: str
    image_id: str
    status: ResultStatus
    predictions: list[Prediction]
    error: str | None
    model: str
    worker_id: str
    timings_ms: dict[str, float]
    enqueued_at: float | None
    received_at: float | None
    completed_at: float
    probabilities: NotRequired[str]  # only when the task asked (``pack_scores``)
    model_version: NotRequired[int]  # the repository version that ran, when it had one
    filename: NotRequired[str]  # added by the web tier from the manifest, never stored


class ImageEntry(TypedDict):
    """One accepted image as the manifest lists it; the web tier checked all of it."""

    image_id: str
    filename: str
    format: str
    width: int
    height: int
    size_bytes: int


class JobSource(TypedDict):
    """Where a job over stored images reads (``url``: a folder, or a file of keys for
    ``manifest``) and where it writes its JSON Lines file (``output``, a folder)."""

    url: str
    kind: SourceKind
    output: str
    model: NotRequired[str]  # the repository model and version its tasks name
    version: NotRequired[int]


class JobManifest(TypedDict):
    """What a job holds and whose it is, at ``manifest_key``. A job over a source lists
    no images here (there may be millions): its ``ListingRecord`` counts them."""

    job_id: str
    created_at: float
    images: list[ImageEntry]
    owner: NotRequired[str]  # absent in manifests written before API keys: ``anonymous``
    source: NotRequired[JobSource]


class ListingRecord(TypedDict):
    """At ``listing_key``: how far a job over a source got. ``cursor`` is the last key
    enqueued (a prefix) or the number of lines read (a manifest); ``pages`` and ``count``
    are what was enqueued; ``generation`` names the current claim on the listing, whose
    holder renews ``lease_until`` while it works."""

    job_id: str
    phase: ListingPhase
    cursor: str
    pages: int
    count: int
    generation: int
    holder: str
    lease_until: float
    error: str | None  # why the listing stopped early (the source vanished, ...)
    cancelled: bool  # the listing stopped at a cancel: the output holds what was listed
    output_url: NotRequired[str]  # once written
    tally: NotRequired[dict[str, int]]  # once written: lines per status (done, failed, ...)


class ListingPage(TypedDict):
    """At ``listing_page_key``: one page of source keys, in key order, enqueued together."""

    keys: list[str]
    cursor: str  # the listing's cursor after this page


class CancelMarker(TypedDict):
    """At ``cancel_key``: the job is cancelled; ``purged`` keeps late workers from
    writing results for a job that no longer exists."""

    cancelled_at: float
    purged: bool


class HealthRecord(TypedDict):
    """A worker's own report at ``worker_key``, read by launchers and ``/v1/stats``."""

    worker_id: str
    host: str
    pid: int
    state: WorkerHealth
    started_at: float
    updated_at: float
    last_batch_at: float | None
    batches: int
    images: int
    failed: int
    exit_reason: NotRequired[str]


class WebhookOutbox(TypedDict):
    """A completion webhook still owed, at ``webhook_key``; deleted after a 2xx."""

    job_id: str
    url: str
    results_url: str
    event_id: str
    owner: str
    created_at: float
    attempts: int
    next_attempt_at: float
    lease_until: float
    state: WebhookState
    lease_owner: NotRequired[str]
    last_error: NotRequired[str]


class AcceptedImage(TypedDict):
    image_id: str
    filename: str


class Rejection(TypedDict):
    """A file that ``POST /v1/jobs?partial=true`` refused, and why."""

    index: int
    filename: str
    status: int
    error: str
    detail: str


class AcceptedBody(TypedDict):
    """The 202 body of ``POST /v1/jobs``, kept so that a retry gets the same answer."""

    job_id: str
    images: list[AcceptedImage]
    rejected: NotRequired[list[Rejection]]
    source: NotRequired[JobSource]  # a job over stored images: where it reads and writes


class IdempotencyClaim(TypedDict):
    """At ``idempotency_key`` until its job is stored: the request that holds the key."""

    claim_id: str
    created_at: float
    job_id: None


class IdempotencyRecord(TypedDict):
    """At ``idempotency_key``: which job a key made, from which files, answered how."""

    claim_id: NotRequired[str]  # the claim it grew from (records before claims lack it)
    job_id: str
    files: str
    body: AcceptedBody
    created_at: float
    enqueued: bool


class TakeoverMarker(TypedDict):
    """At ``idempotency_takeover_key``: one process took over a dead claim, and when."""

    created_at: float


class ReplyQueueRecord(TypedDict):
    """At ``reply_queue_key``: a web process's reply queue and when it was last alive."""

    queue: str
    updated_at: float  # 0: the process stopped cleanly
    cleaned_at: NotRequired[float]  # its queue was removed once; removed again later


class JanitorLease(TypedDict):
    """At ``JANITOR_LEASE``: the process sweeping, and until when."""

    holder: str
    until: float


_R = TypeVar("_R")


def _checked(obj: object, required: tuple[str, ...], what: str, kind: type[_R]) -> _R:
    """``obj`` as the record ``kind`` if it holds the keys every version wrote."""
    if not isinstance(obj, dict) or not all(k in obj for k in required):
        raise RecordError(f"the stored {what} is not a dlaas {what}; it may be corrupt")
    return cast(_R, obj)


def as_result(obj: object) -> ResultRecord:
    return _checked(obj, ("image_id", "status"), "result record", ResultRecord)


def as_manifest(obj: object) -> JobManifest:
    return _checked(obj, ("job_id", "created_at", "images"), "job manifest", JobManifest)


def as_cancel_marker(obj: object) -> CancelMarker:
    marker = _checked(obj, (), "cancel marker", CancelMarker)
    return {
        "cancelled_at": float(marker.get("cancelled_at", 0.0)),
        "purged": bool(marker.get("purged")),
    }


def as_listing(obj: object) -> ListingRecord:
    return _checked(obj, ("job_id", "phase", "cursor", "count"), "listing record", ListingRecord)


def as_listing_page(obj: object) -> ListingPage:
    return _checked(obj, ("keys", "cursor"), "listing page", ListingPage)


def as_health(obj: object) -> HealthRecord:
    return _checked(obj, ("state",), "worker health record", HealthRecord)


def as_outbox(obj: object) -> WebhookOutbox:
    return _checked(obj, ("job_id", "url", "event_id"), "webhook outbox record", WebhookOutbox)


def as_idempotency(obj: object) -> IdempotencyRecord:
    return _checked(obj, ("job_id", "files", "body"), "idempotency record", IdempotencyRecord)


def as_idempotency_entry(obj: object) -> IdempotencyClaim | IdempotencyRecord:
    """What a key's place holds: a claim (no job yet) or the record of its job."""
    if isinstance(obj, dict) and obj.get("job_id") is None:
        return _checked(obj, ("claim_id", "created_at"), "idempotency claim", IdempotencyClaim)
    return as_idempotency(obj)


def idempotency_created_at(obj: object) -> float:
    """When any entry under ``idempotency/`` (claim, record, takeover marker) was made."""
    marker = _checked(obj, ("created_at",), "idempotency entry", TakeoverMarker)
    return float(marker["created_at"])


def as_reply_queue(obj: object) -> ReplyQueueRecord:
    return _checked(obj, ("queue", "updated_at"), "reply queue record", ReplyQueueRecord)


def as_lease(obj: object) -> JanitorLease:
    return _checked(obj, ("holder", "until"), "janitor lease", JanitorLease)


def owner_of(manifest: JobManifest) -> str:
    """The manifest's owner; jobs stored before API keys existed belong to ``anonymous``."""
    return manifest.get("owner") or ANONYMOUS


def result_record(
    *,
    job_id: str,
    image_id: str,
    status: ResultStatus,
    model: str,
    worker_id: str,
    predictions: list[Prediction] | None = None,
    error: str | None = None,
    timings_ms: dict[str, float] | None = None,
    enqueued_at: float | None = None,
    received_at: float | None = None,
    probabilities: str | None = None,
    model_version: int | None = None,
) -> ResultRecord:
    """Top-k predictions or the failure reason; ``received_at`` is when the worker took
    the message off the queue. ``probabilities``, only when the task asked for them:
    every class's score as base64 of little-endian float32 (5.3 kB for 1,000 classes)."""
    record: ResultRecord = {
        "job_id": job_id,
        "image_id": image_id,
        "status": status,
        "predictions": predictions or [],
        "error": error,
        "model": model,
        "worker_id": worker_id,
        "timings_ms": timings_ms or {},
        "enqueued_at": enqueued_at,
        "received_at": received_at,
        "completed_at": time.time(),
    }
    if probabilities is not None:
        record["probabilities"] = probabilities
    if model_version is not None:
        record["model_version"] = model_version
    return record


def pack_scores(scores: NDArray[Any]) -> str:
    """One image's class scores as a result record's ``probabilities`` (base64 float32)."""
    return base64.b64encode(scores.astype(SCORES_DTYPE).tobytes()).decode("ascii")


def unpack_scores(text: str) -> bytes:
    """``probabilities`` back to raw little-endian float32 bytes, 4 per class."""
    return base64.b64decode(text)


def short_label(label: str) -> str:
    """``"tabby, tabby cat"`` -> ``"tabby"``: the first name of the class."""
    return label.split(",", 1)[0].strip()
