"""Owner limits kept in Redis, so that every web replica enforces one limit, not one each.

Each check is one Lua script, atomic on the server whatever the number of replicas, and
timed by the server's clock (``TIME``), so replicas whose clocks differ still agree:

- the rate: a token bucket per owner, a hash of ``tokens`` and ``at``, refilled on each
  take. It expires once it would be full again, so idle owners cost nothing.
- the backlog: a sorted set per owner of the images accepted and not yet answered, scored
  by when they were accepted; entries older than the horizon are dropped on each read,
  as the in-process count does. A small key per image names its owner, so a final reply
  (which carries no owner) releases the image on whichever replica receives it.

Keys are namespaced by the queue's name, so two deployments may share one Redis. When
Redis cannot be reached within ``RECONNECT_TIMEOUT_S`` the limits fail open: requests go
on (the queue, if it is the same Redis, refuses them anyway), Redis is not asked again for
``RETRY_AFTER_OUTAGE_S``, so requests are not slowed meanwhile, and ``owner_limits_unavailable``
is logged once per outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from dlaas.errors import DlaasError
from dlaas.queue.redis_client import Connection, RedisUrl
from dlaas.web.security.tenancy import BACKLOG_HORIZON_S, Limits, OwnerBacklog, RateLimiter

log = logging.getLogger("dlaas.web")

T = TypeVar("T")

RECONNECT_TIMEOUT_S = 2.0
RETRY_AFTER_OUTAGE_S = 5.0
_LABEL = "owner-limits"  # what Redis errors name instead of a stream

_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(saved[1]), tonumber(saved[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_WAITING = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS[1]: the owner's set; ARGV: horizon, the per-image key prefix, then image IDs.
_ACCEPTED = (
    _NOW
    + """
local horizon_ms = math.ceil(tonumber(ARGV[1]) * 1000)
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
  redis.call('SET', ARGV[2] .. ARGV[i], KEYS[1], 'PX', horizon_ms)
end
redis.call('PEXPIRE', KEYS[1], horizon_ms)
return #ARGV - 2
"""
)

# ARGV: the per-image key prefix, then image IDs. Keys are built in the script because the
# owner of each image is only known there.
_RELEASE = """
local released = 0
for i = 2, #ARGV do
  local owner_set = redis.call('GET', ARGV[1] .. ARGV[i])
  if owner_set then
    released = released + redis.call('ZREM', owner_set, ARGV[i])
    redis.call('DEL', ARGV[1] .. ARGV[i])
  end
end
return released
"""


class _Redis:
    """The connection and scripts the two limits share."""

    def __init__(self, url: str, namespace: str) -> None:
        self.conn = Connection(RedisUrl.parse(url), RECONNECT_TIMEOUT_S)
        self.prefix = f"dlaas:limits:{namespace}:"
        client = self.conn.client
        self.take = client.register_script(_TAKE)
        self.waiting = client.register_script(_WAITING)
        self.accepted = client.register_script(_ACCEPTED)
        self.release = client.register_script(_RELEASE)
        self._down_until = 0.0
        self._lock = threading.Lock()

    def call(self, action: str, work: Callable[[], Any], fallback: T) -> Any | T:
        """``work``'s answer, or ``fallback`` while Redis cannot be reached (fail open)."""
        if time.monotonic() < self._down_until:
            return fallback
        try:
            answer = self.conn.call(_LABEL, action, work, needs_group=False)
        except DlaasError as exc:
            with self._lock:
                first = self._down_until == 0.0
                self._down_until = time.monotonic() + RETRY_AFTER_OUTAGE_S
            if first:
                log.error("owner_limits_unavailable", extra={"error": str(exc), "fail": "open"})
            return fallback
        self._down_until = 0.0
        return answer


class RedisRateLimiter(RateLimiter):
    """One token bucket per owner for every replica."""

    blocking = True

    def __init__(self, redis: _Redis, rate_per_s: float, burst: int | None = None) -> None:
        super().__init__(rate_per_s, burst)
        self._redis = redis

    def take(self, owner: str) -> float:
        keys, args = [f"{self._redis.prefix}rate:{owner}"], [self.rate_per_s, self.burst]
        take = self._redis.take
        return float(self._redis.call("take a rate token", lambda: take(keys=keys, args=args), 0))


class RedisOwnerBacklog(OwnerBacklog):
    """Each owner's images waiting or being classified, counted across every replica."""

    def __init__(
        self, redis: _Redis, max_per_owner: int | None, *, horizon_s: float = BACKLOG_HORIZON_S
    ) -> None:
        super().__init__(max_per_owner, horizon_s=horizon_s)
        self._redis = redis
        self._image_prefix = f"{redis.prefix}image:"

    def _set(self, owner: str) -> str:
        return f"{self._redis.prefix}backlog:{owner}"

    def waiting(self, owner: str) -> int:
        keys, args = [self._set(owner)], [self.horizon_s]
        count = self._redis.waiting
        return int(self._redis.call("count waiting images", lambda: count(keys=keys, args=args), 0))

    def accepted(self, owner: str, image_ids: Iterable[str]) -> None:
        if self.max_per_owner is None:
            return
        args: list[Any] = [self.horizon_s, self._image_prefix, *image_ids]
        keys = [self._set(owner)]
        add = self._redis.accepted
        self._redis.call("count accepted images", lambda: add(keys=keys, args=args), None)

    def release(self, image_ids: Iterable[str]) -> None:
        if self.max_per_owner is None:
            return
        args: list[Any] = [self._image_prefix, *image_ids]
        if len(args) == 1:
            return
        drop = self._redis.release
        self._redis.call("release answered images", lambda: drop(keys=[], args=args), None)


class SharedLimits(Limits):
    """``Limits`` in one Redis; ``close`` drops its connection."""

    def __init__(self, redis: _Redis, rate: RateLimiter | None, backlog: OwnerBacklog) -> None:
        super().__init__(rate, backlog, where=redis.conn.url.where)
        self._redis = redis

    def close(self) -> None:
        self._redis.conn.close()


def open_shared_limits(
    url: str,
    *,
    namespace: str,
    rate_per_s: float | None,
    burst: int | None,
    max_backlog: int | None,
) -> SharedLimits:
    """The owner limits in the Redis at ``url`` (``redis://host:port/db``)."""
    redis = _Redis(url, namespace)
    rate = RedisRateLimiter(redis, rate_per_s, burst) if rate_per_s is not None else None
    return SharedLimits(redis, rate, RedisOwnerBacklog(redis, max_backlog))
