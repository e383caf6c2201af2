"""The acting half of a batch: every outcome ended in one step.

In order, so that a crash at any point loses nothing (an undeleted message comes back
after its visibility timeout): malformed bodies to the dead-letter queue; result records
stored (those that travel by file, and the ``cancelled`` records); replies sent, one
``send_batch`` per reply queue; only then the messages deleted, and last the inputs
removed (unless ``--keep-inputs``). An inline result whose reply could not be sent is
stored as a file instead; a message whose result went nowhere stays undeleted.

The worker is the one writer of the results of asynchronous jobs (done, failed) and of
``cancelled`` records (docs/architecture.md, "Who writes what").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dlaas.errors import DlaasError, QueueError, StorageError
from dlaas.jobs.messages import BatchFigures, Cancelled, Finished, Progress, Reply, reply_to_json
from dlaas.jobs.records import ResultRecord, result_record
from dlaas.jobs.store import JobStore
from dlaas.queue.base import Message, Queue
from dlaas.worker.outcome import Admitted, Done, Dropped, Failed, Malformed, Outcome, Repeat

log = logging.getLogger("dlaas.worker")


@dataclass
class _Ending:
    """How one message ends: the record to store (if any), the reply (if any), and
    whether its result is safe, so that the message may be deleted."""

    message: Message
    input_key: str | None
    reply_to: str | None = None
    reply: Reply | None = None
    record: ResultRecord | None = None
    store: bool = False  # the record goes to storage (else it travels in the reply only)
    safe: bool = True


class Settler:
    def __init__(
        self, jobs: JobStore, queue: Queue, worker_id: str, model: str, keep_inputs: bool
    ) -> None:
        self.jobs = jobs
        self.queue = queue
        self.worker_id = worker_id
        self.model = model
        self.keep_inputs = keep_inputs
        self._reply_queues: dict[str, Queue] = {}

    def progress(self, items: Sequence[Admitted]) -> None:
        """Tell the watching web processes that these images are being classified."""
        notes: list[tuple[str, Reply]] = [
            (i.task.reply_to, Progress(i.task.job_id, i.task.image_id))
            for i in items
            if i.task.progress and i.task.reply_to
        ]
        self._send(notes)

    def settle(self, outcomes: Sequence[Outcome], infer_ms: float) -> None:
        """End every message of the batch; see the module docstring for the order."""
        for outcome in outcomes:
            if isinstance(outcome, Malformed):
                self._dead_letter(outcome)
        carrier = next(
            (o for o in outcomes if isinstance(o, Done) and o.task.reply_to is not None), None
        )
        figures: BatchFigures = {
            "size": float(sum(1 for o in outcomes if isinstance(o, Done))),
            "infer_ms": round(infer_ms, 3),
        }
        endings = [
            e
            for o in outcomes
            if not isinstance(o, Malformed)
            and (e := self._ending(o, figures if o is carrier else None)) is not None
        ]
        for ending in endings:
            if ending.record is not None and ending.store:
                ending.safe = self._put(ending.record)
        self._reply([e for e in endings if e.safe])
        self._log(outcomes)
        safe = [e for e in endings if e.safe]
        try:
            self.queue.delete_batch([e.message.receipt for e in safe])
        except DlaasError as exc:  # they come back, find their results, and end again
            log.warning("delete_failed", extra={"messages": len(safe), "error": str(exc)})
            return
        self._remove_inputs([e.input_key for e in safe if e.input_key is not None])

    def _ending(self, outcome: Outcome, figures: BatchFigures | None) -> _Ending | None:
        """How ``outcome``'s message ends; None for a retry, left for redelivery."""
        if isinstance(outcome, Repeat):
            return _Ending(outcome.message, None)  # the input is gone, the result stays
        if isinstance(outcome, Dropped):
            return self._dropped(outcome)
        if isinstance(outcome, Done | Failed):
            task = outcome.task
            outcome.timings_ms["worker"] = round((time.time() - outcome.received_at) * 1000, 3)
            done = outcome if isinstance(outcome, Done) else None
            record = result_record(
                job_id=task.job_id,
                image_id=task.image_id,
                status="done" if done else "failed",
                model=task.model or self.model,
                model_version=task.version,
                worker_id=self.worker_id,
                predictions=done.predictions if done else None,
                error=outcome.error if isinstance(outcome, Failed) else None,
                timings_ms=outcome.timings_ms,
                enqueued_at=task.enqueued_at,
                received_at=outcome.received_at,
                probabilities=done.probabilities if done else None,
            )
            store = not task.inline
            reply = Finished(record, stored=store, batch=figures)
            return _Ending(outcome.message, task.input_key, task.reply_to, reply, record, store)
        return None

    def _dropped(self, outcome: Dropped) -> _Ending:
        """A cancelled job's message: recorded as ``cancelled`` unless the job was purged."""
        task = outcome.task
        if outcome.purged:  # nothing is written for a job that no longer exists
            return _Ending(outcome.message, task.input_key)
        record = result_record(
            job_id=task.job_id,
            image_id=task.image_id,
            status="cancelled",
            model=task.model or self.model,
            worker_id=self.worker_id,
            error="the job was cancelled before this image was classified",
            enqueued_at=task.enqueued_at,
        )
        reply = Cancelled(task.job_id, task.image_id)
        return _Ending(outcome.message, task.input_key, task.reply_to, reply, record, store=True)

    def _put(self, record: ResultRecord) -> bool:
        try:
            self.jobs.put_result(record)
        except StorageError as exc:
            log.warning(
                "result_write_failed",
                extra={
                    "job_id": record["job_id"],
                    "image_id": record["image_id"],
                    "error": str(exc),
                },
            )
            return False
        return True

    def _reply(self, endings: list[_Ending]) -> None:
        """Send the replies; an inline result whose queue failed is stored instead, and
        stays unsafe (its message undeleted) if that fails too."""
        failed = self._send([(e.reply_to, e.reply) for e in endings if e.reply_to and e.reply])
        for ending in endings:
            if ending.reply_to in failed and ending.record is not None and not ending.store:
                ending.safe = self._put(ending.record)

    def _send(self, replies: Sequence[tuple[str | None, Reply | None]]) -> set[str]:
        """One batch per reply queue; return the names of the queues that failed. A lost
        reply is seen late, not never: readers also poll storage."""
        by_queue: dict[str, list[str]] = {}
        for name, reply in replies:
            if name is not None and reply is not None:
                by_queue.setdefault(name, []).append(reply_to_json(reply))
        failed: set[str] = set()
        for name, bodies in by_queue.items():
            try:
                self._reply_queue(name).send_batch(bodies)
            except QueueError as exc:
                log.warning("reply_failed", extra={"reply_to": name, "error": str(exc)})
                failed.add(name)
        return failed

    def _reply_queue(self, name: str) -> Queue:
        if name not in self._reply_queues:
            self._reply_queues[name] = self.queue.sibling(name)
        return self._reply_queues[name]

    def _dead_letter(self, outcome: Malformed) -> None:
        """A body we cannot parse will never succeed: park it in the DLQ at once."""
        message = outcome.message
        log.error("malformed_message", extra={"message_id": message.id, "error": outcome.error})
        try:
            self.queue.dead_letter().send(message.body)
            self.queue.delete(message.receipt)
        except QueueError:
            pass  # it will reach the DLQ through max_receives instead

    def _log(self, outcomes: Sequence[Outcome]) -> None:
        """Logged once the replies are out, so a waiting caller never waits for the log."""
        for o in outcomes:
            if isinstance(o, Done | Failed | Dropped):
                ids = {"job_id": o.task.job_id, "image_id": o.task.image_id}
                if isinstance(o, Failed):
                    log.info(
                        "image_failed", extra={**ids, "worker_id": self.worker_id, "error": o.error}
                    )
                else:
                    event = "image_done" if isinstance(o, Done) else "image_cancelled"
                    log.info(event, extra={**ids, "worker_id": self.worker_id})

    def _remove_inputs(self, keys: list[str]) -> None:
        """Delete the inputs of settled images, unless ``--keep-inputs``."""
        if self.keep_inputs or not keys:
            return
        try:
            self.jobs.storage.delete_many(keys)  # one request or one pass per batch
        except StorageError as exc:  # the janitor removes them with their jobs
            log.warning("input_delete_failed", extra={"keys": len(keys), "error": str(exc)})
