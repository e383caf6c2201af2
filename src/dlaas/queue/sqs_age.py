"""How old the oldest message in an SQS queue is, estimated from this process's sends."""

from __future__ import annotations

import threading
from collections import deque


class SendLog:
    """Estimates the oldest waiting message's age from the sends this process made.

    SQS exposes that age only as a CloudWatch metric (one-minute resolution, another
    permission). Instead: assume messages leave roughly oldest-first, so the ``n``
    messages the queue holds are the ``n`` most recently sent, and the oldest of them
    was sent when this process sent the ``n``-th newest. A process that sent fewer
    than ``n`` (a standalone controller, or messages from other web processes) falls
    back to the oldest send it knows, and then to the time it first saw the queue
    non-empty; these are lower bounds. The queue seen empty resets everything.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._sends: deque[tuple[float, int]] = deque(maxlen=max_entries)
        self._nonempty_since: float | None = None
        self._lock = threading.Lock()

    def sent(self, count: int, at: float) -> None:
        with self._lock:
            self._sends.append((at, count))

    def oldest_age_s(self, outstanding: int, now: float) -> float:
        with self._lock:
            if outstanding <= 0:
                self._sends.clear()
                self._nonempty_since = None
                return 0.0
            if self._nonempty_since is None:
                self._nonempty_since = now
            oldest = self._nonempty_since
            remaining = outstanding
            for index in range(len(self._sends) - 1, -1, -1):
                sent_at, count = self._sends[index]
                oldest = min(oldest, sent_at)
                remaining -= count
                if remaining <= 0:
                    # Older sends are assumed consumed: forget them.
                    for _ in range(index):
                        self._sends.popleft()
                    oldest = sent_at
                    break
            return max(0.0, now - oldest)
