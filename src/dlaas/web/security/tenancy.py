"""Fairness between owners: a token bucket each, and a cap on each one's waiting images.

The classes here keep both in this process: with several web processes behind a load
balancer and nothing shared, an owner gets the rate and the cap once per process.
``dlaas.web.security.shared_limits`` keeps them in Redis instead, so N replicas enforce one limit
(docs/security.md says when each applies).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dlaas.errors import WebError
from dlaas.jobs.messages import Progress, Reply

# An image with no final reply after this long (dead-lettered, or cancelled) stops
# counting against its owner's backlog.
BACKLOG_HORIZON_S = 3600.0


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


@dataclass
class Limits:
    """The owner limits one app enforces: its rate limiter (None: no rate) and backlog."""

    rate: RateLimiter | None
    backlog: OwnerBacklog
    where: str = "process"  # or the shared store's address, for the start-up log

    @classmethod
    def in_process(
        cls, rate_per_s: float | None, burst: int | None, max_backlog: int | None
    ) -> Limits:
        rate = RateLimiter(rate_per_s, burst) if rate_per_s is not None else None
        return cls(rate, OwnerBacklog(max_backlog))

    def close(self) -> None:
        """Release a shared store's connections; nothing in process."""


class RateLimiter:
    """A token bucket per owner: ``rate_per_s`` tokens a second, at most ``burst`` saved."""

    blocking = False  # True when ``take`` waits on the network (run it off the event loop)

    def __init__(
        self,
        rate_per_s: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst if burst is not None else max(1, math.ceil(2 * rate_per_s)))
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, owner: str) -> float:
        """0 when ``owner`` may go ahead (a token is spent), else the seconds to wait."""
        now = self.clock()
        bucket = self._buckets.get(owner)
        if bucket is None:
            bucket = self._buckets[owner] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(
                self.burst, bucket.tokens + (now - bucket.updated_at) * self.rate_per_s
            )
            bucket.updated_at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s


class OwnerBacklog:
    """Images each owner has waiting or being classified, known from the replies.

    Every image this process accepts is counted until its final reply (``done`` or
    ``failed``) arrives, or ``horizon_s`` has passed. Uploads commit in worker threads
    while replies arrive on the event loop, hence the lock.
    """

    def __init__(
        self,
        max_per_owner: int | None,
        *,
        horizon_s: float = BACKLOG_HORIZON_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_owner = max_per_owner
        self.horizon_s = horizon_s
        self.clock = clock
        self._owner_of: OrderedDict[str, tuple[str, float]] = OrderedDict()  # by age
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def waiting(self, owner: str) -> int:
        with self._lock:
            self._expire()
            return self._counts.get(owner, 0)

    def check(self, owner: str, images: int = 1) -> None:
        """429 when ``images`` more would put ``owner`` over the cap (a first job always fits)."""
        if self.max_per_owner is None:
            return
        waiting = self.waiting(owner)
        if waiting and waiting + images > self.max_per_owner:
            raise WebError(
                429,
                "owner_backlog_full",
                f"{waiting} of your images are still waiting (your limit is "
                f"{self.max_per_owner}); retry when some are done",
                headers={"Retry-After": "5"},
            )

    def accepted(self, owner: str, image_ids: Iterable[str]) -> None:
        if self.max_per_owner is None:
            return  # nothing to enforce, so nothing to count
        now = self.clock()
        with self._lock:
            for image_id in image_ids:
                self._owner_of[image_id] = (owner, now)
                self._counts[owner] = self._counts.get(owner, 0) + 1

    def release(self, image_ids: Iterable[str]) -> None:
        """Stop counting these images (their results are in, or their job was cancelled)."""
        if self.max_per_owner is None:
            return  # nothing was counted
        with self._lock:
            for image_id in image_ids:
                found = self._owner_of.pop(image_id, None)
                if found is not None:
                    self._drop(found[0])

    def observe_reply(self, reply: Reply) -> None:
        if not isinstance(reply, Progress):
            self.release((reply.image_id,))

    def _expire(self) -> None:
        cutoff = self.clock() - self.horizon_s
        while self._owner_of:
            image_id, (owner, at) = next(iter(self._owner_of.items()))
            if at > cutoff:
                return
            del self._owner_of[image_id]
            self._drop(owner)

    def _drop(self, owner: str) -> None:
        left = self._counts.get(owner, 0) - 1
        if left > 0:
            self._counts[owner] = left
        else:
            self._counts.pop(owner, None)
