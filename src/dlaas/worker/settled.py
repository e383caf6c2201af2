"""Messages the worker settles without classifying, and inputs it removes after.

- A malformed body goes to the dead-letter queue at once.
- A message of a cancelled job (``protocol.cancel_key``) is deleted without fetching or
  running its image; unless the job was purged, a ``cancelled`` result records why.
- Without ``--keep-inputs``, an image's input is deleted once its message is, i.e. after
  its result is stored (or sent inline); a repeat delivery that then finds no input but
  a result leaves that result alone.

Synchronous calls (``inline_result``) cannot be cancelled, so their messages are not
checked: the hot path of a one-image request gains no storage read.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dlaas import protocol
from dlaas.errors import DlaasError, ObjectNotFound, QueueError, StorageError
from dlaas.queue.base import Message, Queue
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.worker")


class _HasTask(Protocol):
    message: Message
    task: protocol.Task


class Settler:
    def __init__(
        self,
        storage: Storage,
        queue: Queue,
        worker_id: str,
        model: str,
        keep_inputs: bool,
        reply_queue: Callable[[str], Queue],
    ) -> None:
        self.storage = storage
        self.keep_inputs = keep_inputs
        self._reply_queue = reply_queue  # the worker's own, so both share its cache
        self.queue = queue
        self.worker_id = worker_id
        self.model = model

    def drop_cancelled(self, items: Sequence[Any]) -> list[Any]:
        """The items still to classify; those of cancelled jobs are settled here."""
        markers: dict[str, dict[str, Any] | None] = {}
        keep: list[Any] = []
        dropped: list[Any] = []
        for item in items:
            job_id = item.task.job_id
            if item.task.inline_result:
                keep.append(item)
                continue
            if job_id not in markers:
                markers[job_id] = self._marker(job_id)
            marker = markers[job_id]
            if marker is None:
                keep.append(item)
                continue
            if not marker.get("purged") and not self._record_cancelled(item.task):
                keep.append(item)  # could not record it: classify rather than lose it
                continue
            dropped.append(item)
        if dropped:
            purged = {job for job, marker in markers.items() if marker and marker.get("purged")}
            self._reply_cancelled([i for i in dropped if i.task.job_id not in purged])
            with contextlib.suppress(DlaasError):  # undeleted ones come back and drop again
                self.queue.delete_batch([i.message.receipt for i in dropped])
            self.remove_inputs(dropped)
        return keep

    def _reply_cancelled(self, items: Sequence[Any]) -> None:
        """Tell the job's web process at once (event streams, per-owner backlogs); a lost
        reply costs only a moment, since streams also read results from storage."""
        by_queue: dict[str, list[str]] = {}
        for item in items:
            task = item.task
            if task.reply_to:
                reply = protocol.Reply(
                    job_id=task.job_id,
                    image_id=task.image_id,
                    status="cancelled",
                    result_key=protocol.result_key(task.job_id, task.image_id),
                    enqueued_at=task.enqueued_at,
                    completed_at=time.time(),
                )
                by_queue.setdefault(task.reply_to, []).append(reply.to_json())
        for name, bodies in by_queue.items():
            with contextlib.suppress(DlaasError):
                self._reply_queue(name).send_batch(bodies)

    def _marker(self, job_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.storage.get_json(protocol.cancel_key(job_id)))
        except ObjectNotFound:
            return None
        except StorageError:
            return None  # the store is flaky: the fetch will say so, or the job just runs

    def _record_cancelled(self, task: protocol.Task) -> bool:
        record = protocol.result_record(
            job_id=task.job_id,
            image_id=task.image_id,
            status="cancelled",
            model=self.model,
            worker_id=self.worker_id,
            error="the job was cancelled before this image was classified",
            enqueued_at=task.enqueued_at,
        )
        try:
            self.storage.put_json(protocol.result_key(task.job_id, task.image_id), record)
        except StorageError:
            return False
        log.info(
            "image_cancelled",
            extra={"job_id": task.job_id, "image_id": task.image_id, "worker_id": self.worker_id},
        )
        return True

    def dead_letter_malformed(self, message: Message, exc: Exception) -> None:
        """A body we cannot parse will never succeed: park it in the DLQ at once."""
        log.error("malformed_message", extra={"message_id": message.id, "error": str(exc)[:200]})
        try:
            self.queue.dead_letter().send(message.body)
            self.queue.delete(message.receipt)
        except QueueError:
            pass  # it will reach the DLQ through max_receives instead

    def finished_before(self, item: _HasTask) -> bool:
        """A repeat delivery of an image whose input was removed after its result was
        stored: delete the message and keep the result."""
        task = item.task
        try:
            if not self.storage.exists(protocol.result_key(task.job_id, task.image_id)):
                return False
        except StorageError:
            return False
        with contextlib.suppress(DlaasError):
            self.queue.delete(item.message.receipt)
        return True

    def remove_inputs(self, items: Sequence[_HasTask]) -> None:
        """Delete the inputs of settled images, unless ``--keep-inputs``."""
        if self.keep_inputs or not items:
            return
        keys = [item.task.key for item in items]
        try:
            self.storage.delete_many(keys)  # one request or one pass per batch
        except StorageError as exc:  # the janitor removes them with their jobs
            log.warning("input_delete_failed", extra={"keys": len(keys), "error": str(exc)})
