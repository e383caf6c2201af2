"""The queue bodies: ``Task`` (web -> worker) and ``Reply`` (worker -> web process).

A task carries only IDs and keys, so no queue ever sees image bytes. A task of a job
over a source names the source (a folder URL) and the image's key in it: the worker
reads it there, and never deletes it. A reply is one of
three kinds, a tagged union on ``kind``:

- ``Progress``: the worker started classifying the image (only when the task asked);
- ``Finished``: the image's result record itself, done or failed; ``stored`` says
  whether the worker also wrote it at ``result_key`` (an asynchronous job), or whether
  the reply is its only copy (a synchronous call, whose web process stores it only if
  nobody waits any more);
- ``Cancelled``: the job was cancelled before the image ran; the worker stored the
  ``cancelled`` result unless the job was purged.

Bodies are JSON by orjson: 3-5x faster than json on these small bodies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, TypedDict, Unpack, cast

import orjson

from dlaas.jobs.layout import input_key, source_image_id
from dlaas.jobs.records import RecordError, ResultRecord, ResultStatus, as_result


class ImageOptions(TypedDict, total=False):
    """How a job's images are to be run, as ``JobStore.enqueue`` passes them on."""

    progress: bool
    inline_result: bool
    probabilities: bool
    model: str | None
    version: int | None


class TaskOptions(ImageOptions, total=False):
    """``Task``'s optional fields, as ``Task.of`` passes them on."""

    reply_to: str | None
    enqueued_at: float


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
    # Also send every class's score (``ResultRecord.probabilities``): the Open Inference
    # Protocol's FP32 output, and its classification extension past the top-k.
    probabilities: bool = False
    # The repository model and version to run; None: the worker's own model (a service
    # of one ``--model FILE``, or a task from before models had names).
    model: str | None = None
    version: int | None = None
    source: str | None = None  # the folder ``key`` is in; None: dlaas's own store

    @classmethod
    def of(
        cls, job_id: str, image_id: str, *, one_image: bool = False, **options: Unpack[TaskOptions]
    ) -> Task:
        """The task for one stored image of a job (``one_image``: see ``layout.input_key``)."""
        key = input_key(job_id, image_id, one_image=one_image)
        return cls(job_id=job_id, image_id=image_id, key=key, **options)

    @classmethod
    def of_source(cls, job_id: str, source: str, key: str, **options: Unpack[TaskOptions]) -> Task:
        """The task for one image at ``key`` in the ``source`` folder; its ID is the key's."""
        return cls(job_id, source_image_id(key), key, source=source, **options)

    @property
    def input_key(self) -> str | None:
        """The uploaded input to remove once the result is stored; a source's is kept."""
        return None if self.source is not None else self.key

    @property
    def inline(self) -> bool:
        """Whether the result travels in the reply rather than as a file."""
        return self.inline_result and self.reply_to is not None

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
                "model": self.model,
                "version": self.version,
                "source": self.source,
            }
        ).decode()

    @classmethod
    def from_json(cls, body: str) -> Task:
        data = cast(_TaskJson, _object(body))
        version = data.get("version")
        return cls(
            job_id=str(data["job_id"]),
            image_id=str(data["image_id"]),
            key=str(data["key"]),
            reply_to=data.get("reply_to"),
            enqueued_at=float(data.get("enqueued_at", 0.0)),
            progress=bool(data.get("progress", False)),
            inline_result=bool(data.get("inline_result", False)),
            probabilities=bool(data.get("probabilities", False)),
            model=None if data.get("model") is None else str(data["model"]),
            version=None if version is None else int(version),
            source=None if data.get("source") is None else str(data["source"]),
        )


class BatchFigures(TypedDict):
    """On exactly one final reply per batch, so per-batch metrics count each forward
    pass once, however many web processes share the batch."""

    size: float
    infer_ms: float


@dataclass(frozen=True)
class Progress:
    job_id: str
    image_id: str
    kind: Literal["progress"] = "progress"


@dataclass(frozen=True)
class Finished:
    result: ResultRecord
    stored: bool
    batch: BatchFigures | None = None
    kind: Literal["finished"] = "finished"

    @property
    def job_id(self) -> str:
        return self.result["job_id"]

    @property
    def image_id(self) -> str:
        return self.result["image_id"]

    @property
    def status(self) -> ResultStatus:
        return self.result["status"]


@dataclass(frozen=True)
class Cancelled:
    job_id: str
    image_id: str
    kind: Literal["cancelled"] = "cancelled"


Reply = Progress | Finished | Cancelled


def reply_to_json(reply: Reply) -> str:
    if isinstance(reply, Finished):
        body: _ReplyJson = {"kind": reply.kind, "result": reply.result, "stored": reply.stored}
        if reply.batch is not None:
            body["batch"] = reply.batch
        return orjson.dumps(body).decode()
    return orjson.dumps(
        {"kind": reply.kind, "job_id": reply.job_id, "image_id": reply.image_id}
    ).decode()


def reply_from_json(body: str) -> Reply:
    """The reply in ``body``; ValueError (or KeyError, TypeError) for anything else."""
    data = cast(_ReplyJson, _object(body))
    kind = data["kind"]
    if kind == "finished":
        try:
            result = as_result(data["result"])
        except RecordError as exc:
            raise ValueError(str(exc)) from None
        return Finished(result, bool(data["stored"]), data.get("batch"))
    if kind == "progress":
        return Progress(str(data["job_id"]), str(data["image_id"]))
    if kind == "cancelled":
        return Cancelled(str(data["job_id"]), str(data["image_id"]))
    raise ValueError(f"unknown reply kind {kind!r}")


class _TaskJson(TaskOptions, total=False):
    """A task message as sent; every field is still converted on the way in."""

    job_id: str
    image_id: str
    key: str
    source: str | None


class _ReplyJson(TypedDict, total=False):
    """Any reply as sent: ``kind`` says which of the other fields it has."""

    kind: str
    result: object
    stored: bool
    batch: BatchFigures | None
    job_id: str
    image_id: str


def _object(body: str) -> dict[str, object]:
    """A message body's JSON object; ValueError, as json's, for anything else."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError(f"a message body must be a JSON object, not {type(data).__name__}")
    return data
