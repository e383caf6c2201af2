"""The worker loop.

One model load per process; each iteration receives up to ``batch_size`` messages,
classifies them in one forward pass, stores each result, notifies the reply queue and
only then deletes the messages. A crash at any point loses nothing: undeleted messages
come back after their visibility timeout.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import numpy as np

from dlaas import protocol
from dlaas.defaults import BATCH_SIZE
from dlaas.errors import DlaasError, ImageError, ObjectNotFound, QueueError, StorageError
from dlaas.queue.base import Message, Queue
from dlaas.storage.base import Storage
from dlaas.worker.heartbeat import HealthRecord, VisibilityHeartbeat, process_exists
from dlaas.worker.settled import Settler

log = logging.getLogger("dlaas.worker")


class SupportsClassify(Protocol):
    name: str

    def preprocess(self, data: bytes) -> np.ndarray: ...

    def predict(self, batch: np.ndarray, top_k: int = 5) -> Sequence[Sequence[Any]]: ...

    def predict_with_scores(self, batch: np.ndarray, top_k: int = 5) -> tuple[Any, np.ndarray]: ...


@dataclass
class _Item:
    message: Message
    task: protocol.Task
    array: np.ndarray | None = None
    error: str | None = None
    retry: bool = False  # a transient failure: leave the message for redelivery
    predictions: list[protocol.Prediction] | None = None
    probabilities: str | None = None  # every class's score, when the task asks for them
    record: protocol.ResultRecord | None = None  # once built
    received_at: float = field(default_factory=time.time)
    timings_ms: dict[str, float] = field(default_factory=dict)


class Worker:
    """Runs until idle for ``idle_timeout_s``, drained, or stopped by a signal."""

    def __init__(
        self,
        *,
        storage: Storage,
        queue: Queue,
        classifier: SupportsClassify,
        worker_id: str,
        batch_size: int = BATCH_SIZE,
        max_batch_delay_ms: float = 10.0,
        idle_timeout_s: float = 30.0,
        visibility_timeout_s: float = 30.0,
        receive_wait_s: float = 1.0,
        drain_check_interval_s: float = 1.0,
        top_k: int = 5,
        on_busy: Callable[[bool], None] | None = None,
        parent_pid: int | None = None,
        keep_inputs: bool = False,
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.classifier = classifier
        self.worker_id = worker_id
        self.batch_size = batch_size
        self.max_batch_delay_s = max_batch_delay_ms / 1000.0
        self.idle_timeout_s = idle_timeout_s
        self.visibility_timeout_s = visibility_timeout_s
        self.receive_wait_s = min(receive_wait_s, idle_timeout_s)
        self.drain_check_interval_s = drain_check_interval_s
        self.top_k = top_k
        self.on_busy = on_busy
        self.parent_pid = parent_pid
        self.health = HealthRecord(storage, worker_id)
        self._heartbeat = VisibilityHeartbeat(queue, visibility_timeout_s)
        self.settler = Settler(
            storage, queue, worker_id, classifier.name, keep_inputs, self._reply_queue
        )
        self._stop = threading.Event()
        self._reply_queues: dict[str, Queue] = {}
        self._next_drain_check = 0.0
        self.exit_reason = ""

    def stop(self) -> None:
        """Finish the batch in hand, take no new messages, return from ``run``."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def _handler(signum: int, _frame: FrameType | None) -> None:
            log.info("stop_requested", extra={"worker_id": self.worker_id, "signal": signum})
            self.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    def run(self) -> int:
        """The main loop. Returns the process exit code (0 for every planned exit)."""
        self.health.update(state="idle")
        log.info("worker_ready", extra={"worker_id": self.worker_id, "model": self.classifier.name})
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                leaving = self._told_to_leave()
                if leaving:
                    self.exit_reason = leaving
                    break
                batch = self._receive_batch()
                if self._stop.is_set():
                    self._release(batch)
                    break
                if not batch:
                    self.health.update(state="idle")
                    if time.monotonic() - idle_since >= self.idle_timeout_s:
                        self.exit_reason = "idle"
                        break
                    continue
                self.process(batch)
                idle_since = time.monotonic()
        finally:
            self._heartbeat.close()
            reason = self.exit_reason or "stopped"
            self.health.update(state="stopped", exit_reason=reason, force=True)
            log.info("worker_exit", extra={"worker_id": self.worker_id, "reason": reason})
        return 0

    # Receiving ---------------------------------------------------------------

    def _receive_batch(self) -> list[Message]:
        """Wait for one message, then top the batch up only while more is arriving.

        Adaptive batching, as BentoML and Triton do it: when the queue holds nothing more,
        the batch goes at once, so a lone request never waits for company that is not
        coming. ``max_batch_delay_ms`` bounds the topping-up.
        """
        batch = self.queue.receive(
            max_messages=self.batch_size,
            wait_time_s=self.receive_wait_s,
            visibility_timeout_s=self.visibility_timeout_s,
        )
        deadline = time.monotonic() + self.max_batch_delay_s
        while batch and len(batch) < self.batch_size and not self._stop.is_set():
            if time.monotonic() >= deadline:
                break
            more = self.queue.receive(
                max_messages=self.batch_size - len(batch),
                wait_time_s=0,
                visibility_timeout_s=self.visibility_timeout_s,
            )
            if not more:
                break
            batch.extend(more)
        return batch

    def _release(self, batch: Sequence[Message]) -> None:
        """Hand messages received after a stop request straight back to other workers."""
        for message in batch:
            # On failure it reappears after its visibility timeout anyway.
            with contextlib.suppress(DlaasError):
                self.queue.change_visibility(message.receipt, 0)

    def _told_to_leave(self) -> str | None:
        """ "drained" or "parent_exited" when it is time to go; checked once an interval."""
        now = time.monotonic()
        if now < self._next_drain_check:
            return None
        self._next_drain_check = now + self.drain_check_interval_s
        if self.parent_pid is not None and not process_exists(self.parent_pid):
            return "parent_exited"
        try:
            return "drained" if self.storage.exists(protocol.drain_key(self.worker_id)) else None
        except StorageError:
            return None

    # Processing --------------------------------------------------------------

    def process(self, batch: list[Message]) -> None:
        """Classify one batch end to end; see the module docstring for the order."""
        started, received_at = time.monotonic(), time.time()
        self.health.update(state="busy")
        if self.on_busy:
            self.on_busy(True)
        try:
            items = self.settler.drop_cancelled(self._parse(batch, received_at))
            with self._heartbeat.keeping([i.message.receipt for i in items]):
                self._notify_started(items)
                self._fetch_and_decode(items)
                infer_ms = self._infer(items)
                done = self._store_results(items)
                done = self._notify(done, infer_ms)
            self._log_done(done)
            self.queue.delete_batch([i.message.receipt for i in done])
            self.settler.remove_inputs(done)
        finally:
            if self.on_busy:
                self.on_busy(False)
        elapsed_ms = (time.monotonic() - started) * 1000
        failed = sum(1 for i in items if i.error and not i.retry)
        self.health.record_batch(images=len(batch), failed=failed)
        log.info(
            "batch_done",
            extra={
                "worker_id": self.worker_id,
                "batch_size": len(batch),
                "failed": failed,
                "retry": sum(1 for i in items if i.retry),
                "ms": round(elapsed_ms, 2),
                "infer_ms": round(infer_ms, 2),
            },
        )

    def _parse(self, batch: list[Message], received_at: float) -> list[_Item]:
        items: list[_Item] = []
        for message in batch:
            try:
                task = protocol.Task.from_json(message.body)
            except (ValueError, KeyError, TypeError) as exc:
                self.settler.dead_letter_malformed(message, exc)
                continue
            wait_ms = max(0.0, (received_at - (task.enqueued_at or message.sent_at)) * 1000)
            timings = {"queue_wait": round(wait_ms, 3)}
            items.append(_Item(message, task, received_at=received_at, timings_ms=timings))
        return items

    def _fetch_and_decode(self, items: list[_Item]) -> None:
        for item in items:
            t0 = time.perf_counter()
            try:
                data = self.storage.get(item.task.key)
            except ObjectNotFound:
                if self.settler.finished_before(item):  # a repeat; its input was removed
                    item.retry = True  # nothing to store or send: the message is gone
                    continue
                item.error = "the uploaded image is no longer in storage"
                continue
            except StorageError as exc:
                item.error, item.retry = f"storage error: {exc}", True
                continue
            t1 = time.perf_counter()
            try:
                item.array = self.classifier.preprocess(data)
            except ImageError as exc:
                item.error = str(exc)
            t2 = time.perf_counter()
            item.timings_ms["fetch"] = round((t1 - t0) * 1000, 3)
            item.timings_ms["decode"] = round((t2 - t1) * 1000, 3)

    def _infer(self, items: list[_Item]) -> float:
        ready = [i for i in items if i.array is not None]
        if not ready:
            return 0.0
        t0 = time.perf_counter()
        batch = np.stack([i.array for i in ready if i.array is not None])
        if any(i.task.probabilities for i in ready):
            predictions, scores = self.classifier.predict_with_scores(batch, top_k=self.top_k)
        else:
            predictions, scores = self.classifier.predict(batch, top_k=self.top_k), None
        infer_ms = (time.perf_counter() - t0) * 1000
        for n, (item, preds) in enumerate(zip(ready, predictions, strict=True)):
            item.timings_ms["infer_batch"] = round(infer_ms, 3)
            item.timings_ms["batch_size"] = float(len(ready))
            item.predictions = [p.to_dict() for p in preds]
            if scores is not None and item.task.probabilities:
                item.probabilities = protocol.pack_scores(scores[n])
        return infer_ms

    def _store_results(self, items: list[_Item]) -> list[_Item]:
        """Build every record and store those that travel by file; return the items done.

        A task that asked for ``inline_result`` gets its record in the reply instead.
        """
        done: list[_Item] = []
        for item in items:
            if item.retry:
                continue
            task = item.task
            item.timings_ms["worker"] = round((time.time() - item.received_at) * 1000, 3)
            item.record = protocol.result_record(
                job_id=task.job_id,
                image_id=task.image_id,
                status="failed" if item.error else "done",
                model=self.classifier.name,
                worker_id=self.worker_id,
                predictions=item.predictions,
                error=item.error,
                timings_ms=item.timings_ms,
                enqueued_at=task.enqueued_at,
                received_at=item.received_at,
                probabilities=item.probabilities,
            )
            if not _inline(item) and not self._put_record(item):
                continue
            done.append(item)
        return done

    def _log_done(self, done: list[_Item]) -> None:
        """Logged once the replies are out, so a waiting caller never waits for the log."""
        for item in done:
            ids = {"job_id": item.task.job_id, "image_id": item.task.image_id}
            error = {"error": item.error} if item.error else {}
            event = "image_failed" if item.error else "image_done"
            log.info(event, extra={**ids, "worker_id": self.worker_id, **error})

    def _put_record(self, item: _Item) -> bool:
        task = item.task
        try:
            self.storage.put_json(protocol.result_key(task.job_id, task.image_id), item.record)
        except StorageError as exc:
            log.warning(
                "result_write_failed",
                extra={"job_id": task.job_id, "image_id": task.image_id, "error": str(exc)},
            )
            return False
        return True

    def _notify_started(self, items: list[_Item]) -> None:
        watched = [i for i in items if i.task.progress]
        if watched:
            self._send_replies(watched, lambda _item: "classifying")

    def _notify(self, done: list[_Item], infer_ms: float) -> list[_Item]:
        """Send the final replies; return the items whose result is safe (replied or stored).

        An inline result whose reply could not be sent is stored as a file instead, and a
        message whose result went nowhere stays undeleted, to be delivered again.
        """
        inferred = [i for i in done if i.predictions is not None]
        batch = {"size": float(len(inferred)), "infer_ms": round(infer_ms, 3)}
        carrier = next((i for i in inferred if i.task.reply_to), None)
        failed_queues = self._send_replies(
            done,
            lambda item: "failed" if item.error else "done",
            batch_of=lambda item: batch if item is carrier else None,
        )
        return [
            item
            for item in done
            if not (_inline(item) and item.task.reply_to in failed_queues) or self._put_record(item)
        ]

    def _send_replies(
        self,
        items: list[_Item],
        status_of: Callable[[_Item], protocol.ReplyStatus],
        batch_of: Callable[[_Item], dict[str, float] | None] = lambda _item: None,
    ) -> set[str]:
        """Send one batch per reply queue; return the names of the queues that failed."""
        by_queue: dict[str, list[str]] = {}
        for item in items:
            if item.task.reply_to:
                status = status_of(item)
                final = status != "classifying"
                reply = protocol.Reply(
                    job_id=item.task.job_id,
                    image_id=item.task.image_id,
                    status=status,
                    result_key=protocol.result_key(item.task.job_id, item.task.image_id),
                    timings_ms=item.timings_ms if final else None,
                    enqueued_at=item.task.enqueued_at if final else None,
                    completed_at=time.time() if final else None,
                    batch=batch_of(item),
                    result=item.record if final and _inline(item) else None,
                )
                by_queue.setdefault(item.task.reply_to, []).append(reply.to_json())
        failed: set[str] = set()
        for name, bodies in by_queue.items():
            try:
                self._reply_queue(name).send_batch(bodies)
            except QueueError as exc:
                # A stored result is still seen by a reader polling storage.
                log.warning("reply_failed", extra={"reply_to": name, "error": str(exc)})
                failed.add(name)
        return failed

    def _reply_queue(self, name: str) -> Queue:
        if name not in self._reply_queues:
            self._reply_queues[name] = self.queue.sibling(name)
        return self._reply_queues[name]


def _inline(item: _Item) -> bool:
    """Whether the result travels in the reply rather than as a file."""
    return item.task.inline_result and item.task.reply_to is not None
