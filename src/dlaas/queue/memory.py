"""An in-process queue with SQS semantics, for tests and single-process runs.

Queues live in a named broker, so ``open_queue("memory://b", name="q")`` twice in one
process gives the same queue, and siblings of a queue share its broker. Waiting receivers
block on their queue's condition variable until a send, or until a visibility runs out.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from dlaas.errors import ReceiptInvalid
from dlaas.queue.base import (
    DEFAULT_MAX_RECEIVES,
    Message,
    Queue,
    QueueStats,
    validate_queue_name,
)


@dataclass
class _Entry:
    id: str
    body: str
    sent_at: float  # epoch seconds
    visible_at: float  # monotonic seconds
    receive_count: int = 0
    receipt: str | None = None


class _Broker:
    """Every queue of one broker, behind one lock; each queue has its own wake-up condition."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.queues: dict[str, dict[str, _Entry]] = {}  # insertion order is send order
        self._conditions: dict[str, threading.Condition] = {}

    def entries(self, name: str) -> dict[str, _Entry]:
        return self.queues.setdefault(name, {})

    def condition(self, name: str) -> threading.Condition:
        cond = self._conditions.get(name)
        if cond is None:
            cond = self._conditions[name] = threading.Condition(self.lock)
        return cond


_BROKERS: dict[str, _Broker] = {}
_BROKERS_LOCK = threading.Lock()


def _broker(name: str) -> _Broker:
    with _BROKERS_LOCK:
        broker = _BROKERS.get(name)
        if broker is None:
            broker = _BROKERS[name] = _Broker()
        return broker


class MemoryQueue(Queue):
    def __init__(
        self,
        broker: str = "default",
        name: str = "dlaas-input",
        *,
        max_receives: int = DEFAULT_MAX_RECEIVES,
    ) -> None:
        self.broker_name = broker
        self.name = validate_queue_name(name)
        self.url = f"memory://{broker}?name={self.name}"
        self.max_receives = max_receives
        self._broker = _broker(broker)

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        now_epoch, now = time.time(), time.monotonic()
        entries = [_Entry(uuid.uuid4().hex, str(body), now_epoch, now) for body in bodies]
        with self._broker.lock:
            queue = self._broker.entries(self.name)
            for entry in entries:
                queue[entry.id] = entry
            self._broker.condition(self.name).notify_all()
        return [entry.id for entry in entries]

    def _receive(
        self, max_messages: int, wait_time_s: float, visibility_timeout_s: float
    ) -> list[Message]:
        deadline = time.monotonic() + wait_time_s
        with self._broker.lock:
            while True:
                now = time.monotonic()
                messages, next_visible_at = self._take(max_messages, visibility_timeout_s, now)
                if messages or now >= deadline:
                    return messages
                wake_at = deadline if next_visible_at is None else min(deadline, next_visible_at)
                self._broker.condition(self.name).wait(max(0.0, wake_at - now))

    def _take(
        self, max_messages: int, visibility_timeout_s: float, now: float
    ) -> tuple[list[Message], float | None]:
        """Deliver visible messages (dead-lettering exhausted ones); else say when one returns."""
        queue = self._broker.entries(self.name)
        messages: list[Message] = []
        dead: list[_Entry] = []
        next_visible_at: float | None = None
        for entry in queue.values():
            if entry.visible_at > now:
                if next_visible_at is None or entry.visible_at < next_visible_at:
                    next_visible_at = entry.visible_at
                continue
            if self.should_dead_letter(entry.receive_count):
                dead.append(entry)
                continue
            entry.receive_count += 1
            entry.receipt = f"{entry.id}.{secrets.token_hex(8)}"
            entry.visible_at = now + visibility_timeout_s
            messages.append(
                Message(entry.id, entry.body, entry.receipt, entry.receive_count, entry.sent_at)
            )
            if len(messages) == max_messages:
                break
        if dead:
            dlq = self._broker.entries(self.dead_letter_name)
            for entry in dead:
                del queue[entry.id]
                entry.receive_count, entry.receipt, entry.visible_at = 0, None, now
                dlq[entry.id] = entry
            self._broker.condition(self.dead_letter_name).notify_all()
        if messages and visibility_timeout_s == 0:
            self._broker.condition(self.name).notify_all()  # they are visible again at once
        return messages, next_visible_at

    def _find(self, receipt: str) -> _Entry | None:
        message_id, _, _ = receipt.partition(".")
        entry = self._broker.entries(self.name).get(message_id)
        if entry is None or entry.receipt != receipt:
            return None
        return entry

    def delete(self, receipt: str) -> None:
        with self._broker.lock:
            entry = self._find(receipt)
            if entry is not None:
                del self._broker.entries(self.name)[entry.id]

    def delete_batch(self, receipts: Sequence[str]) -> None:
        with self._broker.lock:
            for receipt in receipts:
                self.delete(receipt)  # the broker's lock is re-entrant

    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        with self._broker.lock:
            entry = self._find(receipt)
            if entry is None:
                raise ReceiptInvalid(
                    f"receipt {receipt!r} on queue {self.name!r} is stale: the message was "
                    "deleted or delivered again since; stop working on it"
                )
            entry.visible_at = time.monotonic() + visibility_timeout_s
            self._broker.condition(self.name).notify_all()

    def stats(self) -> QueueStats:
        now, now_epoch = time.monotonic(), time.time()
        with self._broker.lock:
            entries = list(self._broker.entries(self.name).values())
            dead = len(self._broker.queues.get(self.dead_letter_name, {}))
        visible = sum(1 for e in entries if e.visible_at <= now)
        oldest = min((e.sent_at for e in entries), default=None)
        return QueueStats(
            visible=visible,
            in_flight=len(entries) - visible,
            oldest_age_s=0.0 if oldest is None else max(0.0, now_epoch - oldest),
            dead_lettered=dead,
        )

    def sibling(self, name: str) -> MemoryQueue:
        return MemoryQueue(self.broker_name, name, max_receives=self.max_receives)

    def purge(self) -> None:
        with self._broker.lock:
            self._broker.entries(self.name).clear()

    def destroy(self) -> None:
        with self._broker.lock:
            self._broker.queues.pop(self.name, None)
