"""The read-only half of a batch: each message becomes one typed outcome.

Nothing here writes to storage or the queue; ``dlaas.worker.settle`` acts on every
outcome in one step. The outcomes, and what settling does with each:

- ``Malformed``: a body that is not a task; dead-lettered at once.
- ``Dropped``: its job was cancelled; a ``cancelled`` result is recorded (unless the job
  was purged), the message deleted.
- ``Repeat``: a repeat delivery whose input was removed after its result was stored
  (or, for an image in a source, whose result is stored: a source is never removed);
  the message is deleted and the result left alone.
- ``Retry``: a transient failure (storage); the message is left for redelivery.
- ``Failed`` / ``Done``: a result record to store or send, then the message deleted.

Synchronous calls (``inline_result``) cannot be cancelled, so their messages are not
checked: the hot path of a one-image request gains no storage read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dlaas.errors import ImageError, ObjectNotFound, StorageError
from dlaas.jobs import layout
from dlaas.jobs.messages import Task
from dlaas.jobs.records import CancelMarker, pack_scores
from dlaas.jobs.store import JobStore
from dlaas.model.spec import Prediction
from dlaas.queue.base import Message
from dlaas.worker.sources import SourceGone, Sources


class SupportsClassify(Protocol):
    name: str

    def preprocess(self, data: bytes) -> np.ndarray: ...

    def predict(self, batch: np.ndarray, top_k: int = 5) -> Sequence[Sequence[Any]]: ...

    def predict_with_scores(self, batch: np.ndarray, top_k: int = 5) -> tuple[Any, np.ndarray]: ...


@dataclass(frozen=True)
class Malformed:
    message: Message
    error: str


@dataclass(frozen=True)
class Dropped:
    message: Message
    task: Task
    purged: bool


@dataclass(frozen=True)
class Repeat:
    message: Message
    task: Task


@dataclass(frozen=True)
class Retry:
    message: Message
    task: Task
    reason: str


@dataclass(frozen=True)
class Failed:
    message: Message
    task: Task
    error: str
    received_at: float
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class Done:
    message: Message
    task: Task
    predictions: list[Prediction]
    probabilities: str | None  # every class's score, when the task asked for them
    received_at: float
    timings_ms: dict[str, float]


Outcome = Malformed | Dropped | Repeat | Retry | Failed | Done


@dataclass
class Admitted:
    """A task to classify, with what its classification gathers on the way."""

    message: Message
    task: Task
    received_at: float
    timings_ms: dict[str, float]
    array: np.ndarray | None = None
    outcome: Outcome | None = field(default=None)  # set once the task is decided

    def fail(self, error: str) -> None:
        """Decide the item as ``Failed``: it carries the item's own times."""
        self.outcome = Failed(self.message, self.task, error, self.received_at, self.timings_ms)


def admit(jobs: JobStore, batch: list[Message], received_at: float) -> list[Admitted | Outcome]:
    """Parse every message, drop those of cancelled jobs, and those of source images
    already classified (a resumed listing may enqueue a page twice)."""
    markers: dict[str, CancelMarker | None] = {}
    seen: set[tuple[str, str]] = set()
    out: list[Admitted | Outcome] = []
    for message in batch:
        try:
            task = Task.from_json(message.body)
        except (ValueError, KeyError, TypeError) as exc:
            out.append(Malformed(message, str(exc)[:200]))
            continue
        if not task.inline_result:
            if task.job_id not in markers:
                markers[task.job_id] = _marker(jobs, task.job_id)
            marker = markers[task.job_id]
            if marker is not None:
                out.append(Dropped(message, task, marker["purged"]))
                continue
        if task.source is not None and _classified(jobs, task, seen):
            out.append(Repeat(message, task))
            continue
        wait_ms = max(0.0, (received_at - (task.enqueued_at or message.sent_at)) * 1000)
        out.append(Admitted(message, task, received_at, {"queue_wait": round(wait_ms, 3)}))
    return out


def _marker(jobs: JobStore, job_id: str) -> CancelMarker | None:
    try:
        return jobs.cancel_marker(job_id)
    except StorageError:
        return None  # the store is flaky: the fetch will say so, or the job just runs


def _classified(jobs: JobStore, task: Task, seen: set[tuple[str, str]]) -> bool:
    """A twin earlier in this batch, or a result stored already."""
    ids = (task.job_id, task.image_id)
    if ids in seen:
        return True
    seen.add(ids)
    try:
        return jobs.storage.exists(layout.result_key(task.job_id, task.image_id))
    except StorageError:
        return False  # classify it: a second record is the same record


def fetch_and_decode(
    jobs: JobStore, classifier: SupportsClassify, items: list[Admitted], sources: Sources
) -> None:
    """Read each input and decode it; an item that cannot run gets its outcome here."""
    for item in items:
        task = item.task
        t0 = time.perf_counter()
        try:
            if task.source is None:
                data = jobs.storage.get(task.key)
            else:
                data = sources.get(task.source, task.key)
        except SourceGone as exc:
            item.outcome = Failed(item.message, task, str(exc), item.received_at, item.timings_ms)
            continue
        except ObjectNotFound:
            _gone(jobs, item)
            continue
        except StorageError as exc:
            item.outcome = Retry(item.message, task, f"storage error: {exc}")
            continue
        t1 = time.perf_counter()
        try:
            item.array = classifier.preprocess(data)
        except ImageError as exc:
            item.fail(str(exc))
        t2 = time.perf_counter()
        item.timings_ms["fetch"] = round((t1 - t0) * 1000, 3)
        item.timings_ms["decode"] = round((t2 - t1) * 1000, 3)


def _gone(jobs: JobStore, item: Admitted) -> None:
    """No input: a repeat if the result is stored already, else a failure to report."""
    task = item.task
    try:
        if jobs.storage.exists(layout.result_key(task.job_id, task.image_id)):
            item.outcome = Repeat(item.message, task)
            return
    except StorageError:
        pass
    item.fail("the uploaded image is no longer in storage")


def infer(classifier: SupportsClassify, items: list[Admitted], top_k: int) -> float:
    """One forward pass over every decoded item; returns its milliseconds."""
    ready = [i for i in items if i.outcome is None and i.array is not None]
    if not ready:
        return 0.0
    t0 = time.perf_counter()
    batch = np.stack([i.array for i in ready if i.array is not None])
    if any(i.task.probabilities for i in ready):
        predictions, scores = classifier.predict_with_scores(batch, top_k=top_k)
    else:
        predictions, scores = classifier.predict(batch, top_k=top_k), None
    infer_ms = (time.perf_counter() - t0) * 1000
    for n, (item, preds) in enumerate(zip(ready, predictions, strict=True)):
        item.timings_ms["infer_batch"] = round(infer_ms, 3)
        item.timings_ms["batch_size"] = float(len(ready))
        packed = None
        if scores is not None and item.task.probabilities:
            packed = pack_scores(scores[n])
        item.outcome = Done(
            item.message, item.task, list(preds), packed, item.received_at, item.timings_ms
        )
    return infer_ms
