"""Liveness for a batch in hand (visibility heartbeats) and for the worker (health record)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dlaas.errors import DlaasError, ReceiptInvalid
from dlaas.jobs import layout
from dlaas.jobs.records import HealthRecord, WorkerHealth
from dlaas.queue.base import Queue
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.worker")


class VisibilityHeartbeat:
    """Keeps the batch in hand invisible while it runs, however long that takes.

    Extends every receipt to ``visibility_timeout_s`` each third of that period, so a
    slow batch is never handed to a second worker, while a dead worker's messages still
    come back within one timeout. One thread serves every batch of the worker: starting
    a thread per batch cost a lone request 0.1 ms, and several on a busy machine.
    """

    def __init__(self, queue: Queue, visibility_timeout_s: float) -> None:
        self.queue = queue
        self.visibility_timeout_s = visibility_timeout_s
        self.interval_s = max(0.2, visibility_timeout_s / 3)
        self._cond = threading.Condition()
        self._receipts: list[str] = []
        self._due = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def keeping(self, receipts: Sequence[str]) -> Iterator[None]:
        """Beat for ``receipts`` until the block ends; no beat runs after it has ended."""
        with self._cond:
            self._receipts = list(receipts)
            self._due = time.monotonic() + self.interval_s
            if self._receipts and (self._thread is None or not self._thread.is_alive()):
                self._closed = False  # a worker used again after ``run`` returned
                self._thread = threading.Thread(
                    target=self._run, name="visibility-heartbeat", daemon=True
                )
                self._thread.start()
            # No notify: the thread looks at least every ``interval_s``, in time for the
            # first beat. A notify per batch woke it ~3 times per batch for nothing.
        try:
            yield
        finally:
            with self._cond:  # waits for a beat in progress, as the receipts may go next
                self._receipts = []

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if not self._receipts or now < self._due:
                    self._cond.wait(self._due - now if self._receipts else self.interval_s)
                    continue
                for receipt in self._receipts:
                    try:
                        self.queue.change_visibility(receipt, self.visibility_timeout_s)
                    except ReceiptInvalid:
                        log.warning("heartbeat_lost_message", extra={"receipt": receipt[:16]})
                    except DlaasError as exc:
                        log.warning("heartbeat_failed", extra={"error": str(exc)})
                self._due = time.monotonic() + self.interval_s


class HealthReporter:
    """Writes the worker's ``HealthRecord`` (``layout.worker_key``): state, counters,
    last batch time.

    Launchers read it to tell a busy worker from an idle one; the stats endpoint reads
    it to show the fleet. It is written on every state change (so "idle" is never stale
    while a batch runs) and otherwise at most once per ``min_interval_s``.
    """

    def __init__(self, storage: Storage, worker_id: str, min_interval_s: float = 1.0) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self.min_interval_s = min_interval_s
        self.record: HealthRecord = {
            "worker_id": worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": "starting",
            "started_at": time.time(),
            "updated_at": time.time(),
            "last_batch_at": None,
            "batches": 0,
            "images": 0,
            "failed": 0,
        }
        self._last_write = 0.0

    def update(
        self, *, force: bool = False, state: WorkerHealth | None = None, exit_reason: str = ""
    ) -> None:
        changed_state = state is not None and state != self.record["state"]
        if state is not None:
            self.record["state"] = state
        if exit_reason:
            self.record["exit_reason"] = exit_reason
        now = time.monotonic()
        if not (force or changed_state or now - self._last_write >= self.min_interval_s):
            return
        self._write(now)

    def record_batch(self, *, images: int, failed: int) -> None:
        self.record["batches"] += 1
        self.record["images"] += images
        self.record["failed"] += failed
        self.record["last_batch_at"] = time.time()
        self.update()

    def _write(self, now: float) -> None:
        self.record["updated_at"] = time.time()
        try:
            self.storage.put_json(layout.worker_key(self.worker_id), self.record)
            self._last_write = now
        except DlaasError as exc:
            log.warning(
                "health_write_failed", extra={"worker_id": self.worker_id, "error": str(exc)}
            )


def process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a killed parent whose own parent has not reaped it yet is a zombie
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]
