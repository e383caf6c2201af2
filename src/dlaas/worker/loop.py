"""The worker loop.

One model load per process; each iteration receives up to ``batch_size`` messages and
takes them one way: ``outcome`` turns each message into a typed outcome without writing
anything (parse, cancel check, fetch, decode, one forward pass), then ``settle`` ends
every message in one step (records, replies, delete, dead-letter, input removal). A
crash at any point loses nothing: undeleted messages come back after their visibility
timeout.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from dlaas.errors import DlaasError, StorageError
from dlaas.jobs import layout
from dlaas.jobs.store import JobStore
from dlaas.queue.base import Message, Queue
from dlaas.storage.base import Storage
from dlaas.worker import outcome
from dlaas.worker.heartbeat import HealthReporter, VisibilityHeartbeat, process_exists
from dlaas.worker.options import WorkerOptions
from dlaas.worker.outcome import Admitted, Failed, Outcome, Retry, SupportsClassify
from dlaas.worker.settle import Settler
from dlaas.worker.shelf import ModelShelf
from dlaas.worker.sources import Sources

log = logging.getLogger("dlaas.worker")

__all__ = ["SupportsClassify", "Worker", "WorkerOptions"]


class Worker:
    """Runs until idle for ``idle_timeout_s``, drained, or stopped by a signal."""

    def __init__(
        self,
        *,
        storage: Storage,
        queue: Queue,
        classifier: SupportsClassify,
        worker_id: str,
        options: WorkerOptions | None = None,
        on_busy: Callable[[bool], None] | None = None,
        shelf: ModelShelf | None = None,
        sources: Sources | None = None,
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.classifier = classifier
        self.shelf = shelf or ModelShelf(classifier, None)
        self.worker_id = worker_id
        self.options = options = options or WorkerOptions()
        self.on_busy = on_busy
        self.sources = sources or Sources()
        self.receive_wait_s = min(options.receive_wait_s, options.idle_timeout_s)
        self.jobs = JobStore(storage, queue)
        self.health = HealthReporter(storage, worker_id)
        self._heartbeat = VisibilityHeartbeat(queue, options.visibility_timeout_s)
        self.settler = Settler(self.jobs, queue, worker_id, classifier.name, options.keep_inputs)
        self._stop = threading.Event()
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
                    if time.monotonic() - idle_since >= self.options.idle_timeout_s:
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
        size, visibility_s = self.options.batch_size, self.options.visibility_timeout_s
        batch = self.queue.receive(
            max_messages=size, wait_time_s=self.receive_wait_s, visibility_timeout_s=visibility_s
        )
        deadline = time.monotonic() + self.options.max_batch_delay_ms / 1000.0
        while batch and len(batch) < size and not self._stop.is_set():
            if time.monotonic() >= deadline:
                break
            more = self.queue.receive(
                max_messages=size - len(batch), wait_time_s=0, visibility_timeout_s=visibility_s
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
        self._next_drain_check = now + self.options.drain_check_interval_s
        parent = self.options.parent_pid
        if parent is not None and not process_exists(parent):
            return "parent_exited"
        try:
            return "drained" if self.storage.exists(layout.drain_key(self.worker_id)) else None
        except StorageError:
            return None

    # Processing --------------------------------------------------------------

    def _classify(self, items: list[Admitted]) -> float:
        """Fetch, decode and run each model's share of the batch on that model (a batch
        mixes models only while versions swap); returns the forward passes' ms."""
        groups: dict[tuple[str | None, int | None], list[Admitted]] = {}
        for item in items:
            groups.setdefault((item.task.model, item.task.version), []).append(item)
        infer_ms = 0.0
        for (model, version), group in groups.items():
            try:
                classifier = self.shelf.get(model, version)
            except DlaasError as exc:
                for item in group:
                    error = f"model {model} version {version} cannot run here: {exc}"
                    item.outcome = Failed(
                        item.message, item.task, error, item.received_at, item.timings_ms
                    )
                continue
            outcome.fetch_and_decode(self.jobs, classifier, group, self.sources)
            infer_ms += outcome.infer(classifier, group, self.options.top_k)
        return infer_ms

    def process(self, batch: list[Message]) -> None:
        """Classify one batch: decide every message's outcome, then end them all."""
        started, received_at = time.monotonic(), time.time()
        self.health.update(state="busy")
        if self.on_busy:
            self.on_busy(True)
        try:
            admitted = outcome.admit(self.jobs, batch, received_at)
            to_run = [a for a in admitted if isinstance(a, Admitted)]
            with self._heartbeat.keeping([a.message.receipt for a in to_run]):
                self.settler.progress(to_run)
                infer_ms = self._classify(to_run)
            outcomes: list[Outcome] = [
                o for a in admitted if (o := a.outcome if isinstance(a, Admitted) else a)
            ]
            self.settler.settle(outcomes, infer_ms)
        finally:
            if self.on_busy:
                self.on_busy(False)
        failed = sum(1 for o in outcomes if isinstance(o, Failed))
        self.health.record_batch(images=len(batch), failed=failed)
        log.info(
            "batch_done",
            extra={
                "worker_id": self.worker_id,
                "batch_size": len(batch),
                "failed": failed,
                "retry": sum(1 for o in outcomes if isinstance(o, Retry)),
                "ms": round((time.monotonic() - started) * 1000, 2),
                "infer_ms": round(infer_ms, 2),
            },
        )
