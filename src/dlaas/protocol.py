"""What crosses process boundaries: storage keys, queue bodies and result records.

Task bodies carry only IDs and keys (as in the seed), so no queue ever sees image bytes.
A reply may carry the small result record itself (``Reply.result``): a synchronous call
then reads no result file, and the worker writes none.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ResultStatus = Literal["done", "failed"]
ReplyStatus = Literal["classifying", "done", "failed"]
WorkerHealth = Literal["starting", "idle", "busy", "stopped"]
"""``state`` in a worker's record at ``worker_key``. A worker asked to drain keeps
reporting ``idle`` or ``busy`` until it exits (``stopped``, with an ``exit_reason``):
draining is what a launcher sees (``WorkerState.DRAINING``), never what a worker writes."""


def new_id() -> str:
    """A 32-hex-character random ID, safe as a storage-key segment."""
    return uuid.uuid4().hex


def input_key(job_id: str, image_id: str) -> str:
    return f"inputs/{job_id}/{image_id}"


def result_key(job_id: str, image_id: str) -> str:
    return f"results/{job_id}/{image_id}.json"


def results_prefix(job_id: str) -> str:
    return f"results/{job_id}/"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str) -> Task:
        data = json.loads(body)
        return cls(
            job_id=str(data["job_id"]),
            image_id=str(data["image_id"]),
            key=str(data["key"]),
            reply_to=data.get("reply_to"),
            enqueued_at=float(data.get("enqueued_at", 0.0)),
            progress=bool(data.get("progress", False)),
            inline_result=bool(data.get("inline_result", False)),
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
    result: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str) -> Reply:
        data = json.loads(body)
        status = data["status"]
        if status not in ("classifying", "done", "failed"):
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
            result=data["result"] if isinstance(data.get("result"), dict) else None,
        )


def result_record(
    *,
    job_id: str,
    image_id: str,
    status: ResultStatus,
    model: str,
    worker_id: str,
    predictions: list[dict[str, Any]] | None = None,
    error: str | None = None,
    timings_ms: dict[str, float] | None = None,
    enqueued_at: float | None = None,
    received_at: float | None = None,
) -> dict[str, Any]:
    """The JSON stored at ``result_key``: top-k predictions or the failure reason."""
    return {
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


def short_label(label: str) -> str:
    """``"tabby, tabby cat"`` -> ``"tabby"``: the first name of the class."""
    return label.split(",", 1)[0].strip()
