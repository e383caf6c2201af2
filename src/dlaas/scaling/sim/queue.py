"""``SimQueue``: a queue with SQS semantics on any clock, the simulator's virtual one included.

The clock stamps sends and times visibility; a waiting ``receive`` waits in real time,
woken by a send or a shortened visibility. On the simulator's virtual clock nothing
waits: its event loop receives with ``wait_time_s=0`` when a worker is free, and the
clock moves only between events. With a real clock (``time.time``) it is an ordinary
in-process queue, and passes the queue conformance suite like every other backend.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
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
class _Stored:
    id: str
    body: str
    sent_at: float
    receive_count: int = 0
    receipt: str = ""
    invisible_until: float = 0.0


class _Siblings:
    """What sibling queues share: each other by name, one lock and one message counter."""

    def __init__(self) -> None:
        self.queues: dict[str, SimQueue] = {}
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.ids = itertools.count(1)


class SimQueue(Queue):
    """An in-process queue on the clock it is given, with SQS semantics.

    Hidden messages come back when their visibility timeout passes on that clock, and
    the dead-letter rule of ``Queue`` moves exhausted ones to the ``-dlq`` sibling.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        name: str = "sim",
        max_receives: int = DEFAULT_MAX_RECEIVES,
        *,
        _siblings: _Siblings | None = None,
    ) -> None:
        self.clock = clock
        self.name = validate_queue_name(name)
        self.url = f"sim://{name}"
        self.max_receives = max_receives
        self._siblings = _siblings or _Siblings()
        self._siblings.queues[name] = self
        self._lock = self._siblings.lock  # entered directly: cheaper than the condition
        self._changed = self._siblings.changed
        self._visible: deque[_Stored] = deque()
        self._in_flight: dict[str, _Stored] = {}
        self._expiry: list[tuple[float, str]] = []  # (invisible_until, receipt), lazy

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        with self._lock:
            now = self.clock()
            stored = [_Stored(f"m{next(self._siblings.ids)}", body, now) for body in bodies]
            self._visible.extend(stored)
            if stored:
                self._changed.notify_all()
        return [m.id for m in stored]

    def _receive(
        self, max_messages: int, wait_time_s: float, visibility_timeout_s: float
    ) -> list[Message]:
        with self._lock:
            messages = self._take(max_messages, visibility_timeout_s)
            if messages or not wait_time_s:
                return messages  # the simulation's event loop: never waits
            deadline = time.monotonic() + wait_time_s
            while not messages:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                if self._expiry:  # wake when the next hidden message is due back
                    remaining_s = min(remaining_s, self._expiry[0][0] - self.clock())
                self._changed.wait(max(0.0, remaining_s))
                messages = self._take(max_messages, visibility_timeout_s)
            return messages

    def _take(self, max_messages: int, visibility_timeout_s: float) -> list[Message]:
        now = self.clock()
        self._expire(now)
        out: list[Message] = []
        moved = False
        while self._visible and len(out) < max_messages:
            m = self._visible.popleft()
            if self.should_dead_letter(m.receive_count):
                m.receive_count, m.receipt, m.invisible_until = 0, "", 0.0
                self.sibling(self.dead_letter_name)._visible.append(m)
                moved = True
                continue
            m.receive_count += 1
            m.receipt = f"{m.id}:{m.receive_count}"
            m.invisible_until = now + visibility_timeout_s
            self._in_flight[m.receipt] = m
            heapq.heappush(self._expiry, (m.invisible_until, m.receipt))
            out.append(Message(m.id, m.body, m.receipt, m.receive_count, m.sent_at))
        if moved or (out and visibility_timeout_s == 0):
            self._changed.notify_all()  # the DLQ has news, or these are visible again at once
        return out

    def delete(self, receipt: str) -> None:
        with self._lock:
            self._in_flight.pop(receipt, None)

    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        with self._lock:
            m = self._in_flight.get(receipt)
            if m is None:
                raise ReceiptInvalid(
                    f"receipt {receipt!r} on queue {self.name!r} is stale: the message was "
                    "deleted or delivered again since; stop working on it"
                )
            m.invisible_until = self.clock() + visibility_timeout_s
            heapq.heappush(self._expiry, (m.invisible_until, receipt))
            self._changed.notify_all()

    def stats(self) -> QueueStats:
        with self._lock:
            now = self.clock()
            self._expire(now)
            # The visible deque is in arrival order (expired messages go back to its
            # front), so its head is the oldest visible message.
            oldest = self._visible[0].sent_at if self._visible else now
            for m in self._in_flight.values():
                oldest = min(oldest, m.sent_at)
            dlq = self._siblings.queues.get(self.dead_letter_name)
            return QueueStats(
                visible=len(self._visible),
                in_flight=len(self._in_flight),
                oldest_age_s=now - oldest,
                dead_lettered=0 if dlq is None else len(dlq._visible) + len(dlq._in_flight),
            )

    def sibling(self, name: str) -> SimQueue:
        with self._lock:
            queue = self._siblings.queues.get(name)
            if queue is None:
                queue = SimQueue(self.clock, name, self.max_receives, _siblings=self._siblings)
            return queue

    def purge(self) -> None:
        with self._lock:
            self._visible.clear()
            self._in_flight.clear()
            self._expiry.clear()

    def destroy(self) -> None:
        with self._lock:
            self.purge()
            if self._siblings.queues.get(self.name) is self:
                del self._siblings.queues[self.name]

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, receipt = heapq.heappop(self._expiry)
            m = self._in_flight.get(receipt)
            if m is not None and m.invisible_until <= now:
                del self._in_flight[receipt]
                self._visible.appendleft(m)

    @property
    def visible_count(self) -> int:
        """Messages ready for a worker now, without the cost of a full ``stats``."""
        with self._lock:
            self._expire(self.clock())
            return len(self._visible)
