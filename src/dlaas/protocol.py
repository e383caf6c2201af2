"""What crosses process boundaries: storage keys, queue bodies and result records.

Task bodies carry only IDs and keys (as in the seed), so no queue ever sees image bytes.
A reply may carry the small result record itself (``Reply.result``): a synchronous call
then reads no result file, and the worker writes none.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict, cast

import orjson

from dlaas.errors import StorageError

if TYPE_CHECKING:
    from numpy.typing import NDArray

ResultStatus = Literal["done", "failed", "cancelled"]
ReplyStatus = Literal["classifying", "done", "failed", "cancelled"]
SCORES_DTYPE = "<f4"  # numpy's name for the dtype of a result record's ``probabilities``
WorkerHealth = Literal["starting", "idle", "busy", "stopped"]
"""``state`` in a worker's record at ``worker_key``. A worker asked to drain keeps
reporting ``idle`` or ``busy`` until it exits (``stopped``, with an ``exit_reason``):
draining is what a launcher sees (``WorkerState.DRAINING``), never what a worker writes."""


class Prediction(TypedDict):
    class_id: int
    label: str
    score: float


class ResultRecord(TypedDict):
    """The JSON at ``result_key`` (and inside an inline ``Reply``); see ``result_record``."""

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
    filename: NotRequired[str]  # added by the web tier from the manifest, never stored


class ImageEntry(TypedDict):
    """One accepted image as the manifest lists it; the web tier checked all of it."""

    image_id: str
    filename: str
    format: str
    width: int
    height: int
    size_bytes: int


class JobManifest(TypedDict):
    """The JSON at ``manifest_key``: what a job holds and whose it is."""

    job_id: str
    created_at: float
    images: list[ImageEntry]
    owner: NotRequired[str]  # absent in manifests written before API keys: ``anonymous``


class RecordError(StorageError):
    """A stored record is not the shape this version writes (corrupt or foreign)."""


def _record(obj: object, required: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or not all(k in obj for k in required):
        raise RecordError(f"the stored {what} is not a dlaas {what}; it may be corrupt")
    return cast(dict[str, Any], obj)


def as_result(obj: object) -> ResultRecord:
    """A result record read back from storage or a reply, checked for its keys."""
    return cast(ResultRecord, _record(obj, ("image_id", "status"), "result record"))


def as_manifest(obj: object) -> JobManifest:
    """A job manifest read back from storage, checked for its keys."""
    return cast(JobManifest, _record(obj, ("job_id", "created_at", "images"), "job manifest"))


def new_id() -> str:
    """A 32-hex-character random ID, safe as a storage-key segment."""
    return uuid.uuid4().hex


def new_job_id() -> str:
    """A 32-hex job ID that starts with its creation time (the UUIDv7 layout).

    IDs then sort by age, so ``GET /v1/jobs`` pages newest first and the janitor tells a
    job's age from its keys alone, without reading its manifest.
    """
    ms = int(time.time() * 1000) & (2**48 - 1)
    rand = uuid.uuid4().int
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & (2**62 - 1))
    return f"{value:032x}"


def job_created_at(job_id: str) -> float | None:
    """Creation time (epoch s) of an ID from ``new_job_id``; None for older random IDs."""
    if len(job_id) != 32 or job_id[12] != "7" or job_id[16] not in "89ab":
        return None
    try:
        return int(job_id[:12], 16) / 1000.0
    except ValueError:
        return None


def input_key(job_id: str, image_id: str) -> str:
    return f"inputs/{job_id}/{image_id}"


def result_key(job_id: str, image_id: str) -> str:
    return f"results/{job_id}/{image_id}.json"


def results_prefix(job_id: str) -> str:
    return f"results/{job_id}/"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


def cancel_key(job_id: str) -> str:
    """Present = the job is cancelled (``{"purged": bool}``); workers skip its messages."""
    return f"cancelled/{job_id}.json"


def webhook_key(job_id: str) -> str:
    """A completion webhook still owed for the job (the outbox record)."""
    return f"webhooks/{job_id}.json"


def worker_key(worker_id: str) -> str:
    """The worker's heartbeat record, read by launchers and the stats endpoint."""
    return f"workers/{worker_id}.json"


def drain_key(worker_id: str) -> str:
    """If this object exists, the worker finishes the batch in hand and exits."""
    return f"workers/{worker_id}.drain"


@dataclass(frozen=True)
class Task:
    """The input-queue body: one image to classify."""

    job_id: str
    image_id: str
    key: str
    reply_to: str | None = None  # name of a sibling queue to notify, if any
    enqueued_at: float = field(default_factory=time.time)
    progress: bool = False  # also notify when classifying starts (for job event streams)
    # Send the result record inside the reply and store no result file: a synchronous
    # call answers from the reply; its web process stores the record only if nobody waits.
    inline_result: bool = False
    # Also send every class's score (``result_record``'s ``probabilities``): the Open
    # Inference Protocol's FP32 output, and its classification extension past the top-k.
    probabilities: bool = False

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "job_id": self.job_id,
                "image_id": self.image_id,
                "key": self.key,
                "reply_to": self.reply_to,
                "enqueued_at": self.enqueued_at,
                "progress": self.progress,
                "inline_result": self.inline_result,
                "probabilities": self.probabilities,
            }
        ).decode()

    @classmethod
    def from_json(cls, body: str) -> Task:
        data = _object(body)
        return cls(
            job_id=str(data["job_id"]),
            image_id=str(data["image_id"]),
            key=str(data["key"]),
            reply_to=data.get("reply_to"),
            enqueued_at=float(data.get("enqueued_at", 0.0)),
            progress=bool(data.get("progress", False)),
            inline_result=bool(data.get("inline_result", False)),
            probabilities=bool(data.get("probabilities", False)),
        )


@dataclass(frozen=True)
class Reply:
    """The reply-queue body: a pointer to a result that is already stored.

    ``classifying`` replies are sent when a batch starts, so pages can show progress;
    the others carry the timings so metrics need no extra storage read.
    """

    job_id: str
    image_id: str
    status: ReplyStatus
    result_key: str
    timings_ms: dict[str, float] | None = None
    enqueued_at: float | None = None
    completed_at: float | None = None
    # Set on exactly one final reply per batch ({"size": n, "infer_ms": t}), so per-batch
    # metrics count each forward pass once, however many web processes share the batch.
    batch: dict[str, float] | None = None
    # The whole result record when the task asked for ``inline_result``; else None and the
    # record is at ``result_key``.
    result: ResultRecord | None = None

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "job_id": self.job_id,
                "image_id": self.image_id,
                "status": self.status,
                "result_key": self.result_key,
                "timings_ms": self.timings_ms,
                "enqueued_at": self.enqueued_at,
                "completed_at": self.completed_at,
                "batch": self.batch,
                "result": self.result,
            }
        ).decode()

    @classmethod
    def from_json(cls, body: str) -> Reply:
        data = _object(body)
        status = data["status"]
        if status not in ("classifying", "done", "failed", "cancelled"):
            raise ValueError(f"unknown reply status {status!r}")
        return cls(
            job_id=str(data["job_id"]),
            image_id=str(data["image_id"]),
            status=status,
            result_key=str(data["result_key"]),
            timings_ms=data.get("timings_ms"),
            enqueued_at=data.get("enqueued_at"),
            completed_at=data.get("completed_at"),
            batch=data.get("batch"),
            result=as_result(data["result"]) if isinstance(data.get("result"), dict) else None,
        )


def _object(body: str) -> dict[str, Any]:
    """A message body's JSON object (orjson: 3-5x faster than json on these bodies);
    ValueError, as json's, for anything else."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError(f"a message body must be a JSON object, not {type(data).__name__}")
    return data


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
) -> ResultRecord:
    """The JSON stored at ``result_key``: top-k predictions or the failure reason.

    ``probabilities``, only when the task asked for them: every class's softmax score as
    base64 of little-endian float32 (``SCORES_DTYPE``), 5.3 kB for 1,000 classes.
    """
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
        "received_at": received_at,  # when the worker took the message off the queue
        "completed_at": time.time(),
    }
    if probabilities is not None:
        record["probabilities"] = probabilities
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
