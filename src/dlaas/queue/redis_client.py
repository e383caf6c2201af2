"""Redis as the ``redis://`` backend calls it: the URL, the Lua scripts, and ``Connection.call``,
the one place where redis-py's errors become dlaas errors and a lost connection is retried.

Every operation that reads and then changes the stream runs as one Lua script, so it is
atomic however many workers share the stream. A dropped connection, a restarting server
(``LOADING``) or a replica promoted mid-call (``READONLY``) is retried with jittered
exponential backoff until ``reconnect_timeout_s`` runs out. Retries keep the queue's
guarantees: a send may be repeated (delivery is at least once anyway), and a receive
whose reply was lost leaves its messages pending, so they come back after their
visibility timeout.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse, urlunparse

import redis
from redis import exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry

from dlaas.errors import ConfigError, QueueError

log = logging.getLogger("dlaas.queue")

T = TypeVar("T")

GROUP = "dlaas"  # every stream has this one consumer group; KEDA's scaler names it
IDLE_CONSUMER_MS = 60 * 60 * 1000  # a consumer with nothing pending, idle this long, is pruned
# Visibility is stored as a pending entry's idle time: a message received with a timeout
# of v seconds gets idle time HORIZON - v, so XAUTOCLAIM with min-idle-time HORIZON
# reclaims it exactly v seconds later. 12 hours is also SQS's longest visibility timeout.
HORIZON_MS = 12 * 60 * 60 * 1000
DEFAULT_RECONNECT_TIMEOUT_S = 60.0
MAX_BLOCK_S = 10.0  # longest single blocking read; the socket timeout is above it
SOCKET_TIMEOUT_S = MAX_BLOCK_S + 5.0
_RETRIED = (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.TryAgainError)
_FATAL = (rx.AuthenticationError, rx.AuthorizationError, rx.NoPermissionError)


@dataclass(frozen=True)
class RedisUrl:
    """``redis://[:password@]host:port/db?stream=NAME`` split into server and stream."""

    server: str  # the URL without our query, for redis-py
    stream: str | None
    where: str  # host:port/db, safe to log (no password)

    @classmethod
    def parse(cls, url: str) -> RedisUrl:
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        unknown = sorted(set(query) - {"stream", "name"})
        if unknown:
            raise ConfigError(
                f"queue URL has unknown parameter(s) {', '.join(unknown)}; a redis:// queue "
                "takes only ?stream=NAME, as in redis://host:6379/0?stream=dlaas-input"
            )
        streams = {*query.get("stream", ()), *query.get("name", ())}
        if len(streams) > 1:
            raise ConfigError(f"queue URL names more than one stream: {', '.join(sorted(streams))}")
        db = parsed.path.strip("/") or "0"
        if not db.isdigit():
            raise ConfigError(
                f"queue URL path /{db} is not a Redis database number; use redis://host:6379/0"
            )
        where = f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}/{db}"
        server = urlunparse(parsed._replace(path=f"/{db}", query="", fragment=""))
        return cls(server, next(iter(streams), None), where)


def make_client(url: RedisUrl) -> redis.Redis:
    """A thread-safe client with a connection pool; our own loop does the retrying."""
    client: redis.Redis = redis.Redis.from_url(
        url.server,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    return client


class Connection:
    """A client shared by a queue and its siblings, plus the retry loop around every call."""

    def __init__(self, url: RedisUrl, reconnect_timeout_s: float) -> None:
        self.url = url
        self.client = make_client(url)
        self.reconnect_timeout_s = reconnect_timeout_s
        self.scripts = {name: self.client.register_script(src) for name, src in SCRIPTS.items()}
        self._groups: set[str] = set()
        self._lock = threading.Lock()
        self._outage_since: float | None = None

    @property
    def consumer(self) -> str:
        """This process's consumer name: XPENDING and XINFO CONSUMERS show who holds what.

        Visibility does not depend on it (any receiver reclaims by idle time), and it is
        read per call because a forked child is another consumer.
        """
        return f"{socket.gethostname()}-{os.getpid()}"

    def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self.scripts[name](keys=keys, args=args)

    def ensure_group(self, stream: str) -> None:
        """Create the stream's consumer group (and the stream) unless this process did."""
        if stream in self._groups:
            return
        try:
            self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except rx.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        with self._lock:
            self._groups.add(stream)

    def forget_group(self, stream: str) -> None:
        with self._lock:
            self._groups.discard(stream)

    def call(
        self, stream: str, action: str, work: Callable[[], T], *, needs_group: bool = True
    ) -> T:
        """Run ``work``; on a lost connection, reconnect with backoff until the timeout.

        A missing consumer group (a fresh stream, or a Redis restarted without persistence)
        is created and the call repeated.
        """
        give_up_at = time.monotonic() + self.reconnect_timeout_s
        backoff_s = 0.05
        while True:
            try:
                if needs_group and stream not in self._groups:
                    self.ensure_group(stream)
                result = work()
            except _FATAL as exc:
                raise QueueError(
                    f"Redis at {self.url.where} refused to {action} on stream {stream!r}: {exc}; "
                    "check the user name and password in the queue URL"
                ) from exc
            except _RETRIED as exc:
                self._lost(exc)
                if time.monotonic() >= give_up_at:
                    raise QueueError(
                        f"cannot reach Redis at {self.url.where} to {action} on stream "
                        f"{stream!r} after {self.reconnect_timeout_s:.0f} s: {exc}; check that "
                        "Redis is running and that the queue URL names it"
                    ) from exc
                time.sleep(random.uniform(0.5, 1.0) * backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            except rx.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self.forget_group(stream)
                    if time.monotonic() < give_up_at:
                        continue
                raise QueueError(
                    f"Redis at {self.url.where} failed to {action} on stream {stream!r}: {exc}"
                ) from exc
            except rx.RedisError as exc:
                raise QueueError(
                    f"Redis at {self.url.where} failed to {action} on stream {stream!r}: {exc}"
                ) from exc
            self._back()
            return result

    def _lost(self, exc: Exception) -> None:
        with self._lock:
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
                self._groups.clear()  # a restarted server may have lost them
        if first:
            log.warning("redis_reconnecting", extra={"redis": self.url.where, "error": str(exc)})

    def _back(self) -> None:
        if self._outage_since is None:
            return
        with self._lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            down_s = round(time.monotonic() - since, 2)
            log.info("redis_reconnected", extra={"redis": self.url.where, "down_s": down_s})

    def close(self) -> None:
        """Remove this process's consumers (and long-idle ones) that hold nothing, then
        disconnect. Best effort and without retries: closing never waits for Redis."""
        for stream in sorted(self._groups):
            try:
                self.scripts["prune"](keys=[stream], args=[GROUP, self.consumer, IDLE_CONSUMER_MS])
            except rx.ResponseError:
                continue  # the stream or its group is gone: nothing to prune there
            except rx.RedisError:
                break
        self.client.close()


# Lua scripts. KEYS[1] is the stream; ARGV[1] the group and ARGV[2] the consumer.

_TAKE = """
local stream, dlq = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local horizon, want, idle = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local max_receives, dead_letters = tonumber(ARGV[6]), ARGV[7] == '1'
local out, keep, moved = {}, {}, 0
-- 1. Messages whose visibility ran out: claimed again, or moved to the dead letters.
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', stream, group, consumer, horizon, cursor,
                       'COUNT', want - #out)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    local id, fields = e[1], e[2]
    local count = redis.call('XPENDING', stream, group, id, id, 1)[1][4]
    if dead_letters and count > max_receives then
      local moved_fields = {unpack(fields)}
      local has_id = false
      for i = 1, #fields, 2 do if fields[i] == 'i' then has_id = true end end
      if not has_id then
        table.insert(moved_fields, 'i'); table.insert(moved_fields, id)
        table.insert(moved_fields, 't'); table.insert(moved_fields, string.match(id, '^%d+'))
      end
      redis.call('XADD', dlq, '*', unpack(moved_fields))
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
      moved = moved + 1
    else
      table.insert(keep, id)
      table.insert(out, {id, fields, count})
    end
  end
until cursor == '0-0' or #out >= want
-- 2. New messages.
if #out < want then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want - #out,
                       'STREAMS', stream, '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      table.insert(keep, e[1])
      table.insert(out, {e[1], e[2], 1})
    end
  end
end
-- 3. Their visibility, as an idle time (XCLAIM with JUSTID leaves the counter alone).
if #keep > 0 then
  local args = {stream, group, consumer, 0}
  for _, id in ipairs(keep) do table.insert(args, id) end
  table.insert(args, 'IDLE'); table.insert(args, idle); table.insert(args, 'JUSTID')
  redis.call('XCLAIM', unpack(args))
end
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local last_id = '0-0'
if last[1] then last_id = last[1][1] end
return {out, last_id, redis.call('XPENDING', stream, group)[1], moved}
"""

_DELETE = """
local deleted = 0
for i = 2, #ARGV, 2 do
  local id, count = ARGV[i], tonumber(ARGV[i + 1])
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  if p and p[4] == count then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    deleted = deleted + 1
  end
end
return deleted
"""

_CHANGE_VISIBILITY = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not p or p[4] ~= tonumber(ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[5], 'JUSTID')
return 1
"""

_STATS = """
local total = redis.call('XLEN', KEYS[1])
local pending, expired = 0, 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and not summary.err then
  pending = summary[1]
  if pending > 0 then
    expired = #redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', pending)
  end
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest_ms = -1
if first[1] then oldest_ms = tonumber(string.match(first[1][1], '^%d+')) end
local now = redis.call('TIME')
local dead = 0
if KEYS[2] ~= '' then dead = redis.call('XLEN', KEYS[2]) end
return {total, pending, expired, oldest_ms, now[1] * 1000 + math.floor(now[2] / 1000), dead}
"""

_PURGE = """
redis.call('DEL', KEYS[1])
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
return 1
"""

_PRUNE = """
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and (info['name'] == ARGV[2] or info['idle'] >= tonumber(ARGV[3])) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

SCRIPTS = {
    "prune": _PRUNE,
    "take": _TAKE,
    "delete": _DELETE,
    "change_visibility": _CHANGE_VISIBILITY,
    "stats": _STATS,
    "purge": _PURGE,
}
