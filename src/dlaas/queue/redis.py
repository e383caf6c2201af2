"""Redis Streams as the queue: ``redis://host:port/db?stream=NAME``.

Each queue is a stream with one consumer group, and the SQS semantics map onto it so:

- receive: new messages with ``XREADGROUP``; while none are there, a blocking ``XREAD``
  wakes on the next send.
- visibility timeout: a message's pending idle time stands for it (see
  ``redis_client.HORIZON_MS``), so ``XAUTOCLAIM`` in any receiver reclaims messages whose
  timeout ran out. There is no reaper process.
- heartbeat: ``XCLAIM ... IDLE ... JUSTID`` resets the idle time, not the counter.
- receive count: the group's delivery counter. A receipt is ``ID:COUNT``, so it goes stale
  as soon as the message is delivered again.
- dead letters: past ``max_receives`` a reclaimed message moves to ``NAME-dlq``.
- delete: ``XACK`` plus ``XDEL``, so the stream holds exactly the messages not yet done.
- stats: visible and in flight from the stream length and the pending list; the oldest
  age from the first stream ID, which carries its time, against the server's clock.

Reply queues and the dead-letter queue are sibling streams on the same server.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from dlaas.defaults import QUEUE_NAME
from dlaas.errors import ConfigError, QueueError, ReceiptInvalid
from dlaas.queue.base import (
    DEFAULT_MAX_RECEIVES,
    Message,
    Queue,
    QueueStats,
    validate_queue_name,
)
from dlaas.queue.redis_client import (
    DEFAULT_RECONNECT_TIMEOUT_S,
    GROUP,
    HORIZON_MS,
    MAX_BLOCK_S,
    Connection,
    RedisUrl,
)

_RECEIPT = re.compile(r"^(\d+-\d+):(\d+)$")
RECLAIM_CHECK_S = 0.5  # while messages are in flight, how often a waiting receive re-checks


class RedisQueue(Queue):
    """One stream. Siblings share this queue's connection pool."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        max_receives: int = DEFAULT_MAX_RECEIVES,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        _connection: Connection | None = None,
    ) -> None:
        """A stream on ``url``'s server. ``open`` is the way in (it checks the server
        first); siblings pass the ``_connection`` they share."""
        try:
            self.name = validate_queue_name(name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.max_receives = max_receives
        self._owns_connection = _connection is None
        if _connection is None:
            _connection = Connection(RedisUrl.parse(url), reconnect_timeout_s)
        self._conn = _connection
        self.url = f"{self._conn.url.server}?stream={self.name}"
        self._dlq = "" if self.is_dead_letter_queue else self.dead_letter_name

    @classmethod
    def open(
        cls,
        url: str,
        *,
        name: str | None = None,
        max_receives: int = DEFAULT_MAX_RECEIVES,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        connect_timeout_s: float = 10.0,
    ) -> RedisQueue:
        """Open ``url``; the stream is ``?stream=``, else ``name``, else the default name.

        The URL wins over ``name`` because the URL is what a Redis deployment shares
        (KEDA's scaler names the same stream); ``--queue-name`` always has a value.

        Waits up to ``connect_timeout_s`` (at most ``reconnect_timeout_s``) for the server,
        then raises ConfigError.
        """
        parsed = RedisUrl.parse(url)
        connection = Connection(parsed, min(connect_timeout_s, reconnect_timeout_s))
        queue = cls(
            url,
            parsed.stream or name or QUEUE_NAME,
            max_receives=max_receives,
            _connection=connection,
        )
        queue._owns_connection = True
        try:
            connection.call(queue.name, "open", lambda: None)  # connects, creates the group
        except QueueError as exc:
            connection.close()
            raise ConfigError(str(exc)) from None
        connection.reconnect_timeout_s = reconnect_timeout_s
        return queue

    # Sending ---------------------------------------------------------------------

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        """All in one MULTI/EXEC transaction: every message is added, or none is."""
        if not bodies:
            return []

        def send() -> list[str]:
            pipe = self._conn.client.pipeline(transaction=True)
            for body in bodies:
                pipe.xadd(self.name, {"b": str(body)})
            return [str(i) for i in pipe.execute()]

        return self._conn.call(self.name, "send", send)

    # Receiving -------------------------------------------------------------------

    def _receive(
        self, max_messages: int, wait_time_s: float, visibility_timeout_s: float
    ) -> list[Message]:
        deadline = time.monotonic() + wait_time_s
        consumer, idle_ms = self._conn.consumer, _idle_ms(visibility_timeout_s)
        args = [GROUP, consumer, HORIZON_MS, max_messages, idle_ms, self.max_receives]
        args.append("1" if self._dlq else "0")
        keys = [self.name, self._dlq or self.name]
        while True:
            entries, last_id, pending, _moved = self._conn.call(
                self.name, "receive", lambda: self._conn.script("take", keys, args)
            )
            if entries:
                return [_message(entry) for entry in entries]
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return []
            # New messages wake the blocking read; in-flight ones can only come back
            # when their visibility ends, which the next take notices.
            block_s = min(remaining_s, MAX_BLOCK_S)
            if int(pending) > 0:
                block_s = min(block_s, RECLAIM_CHECK_S)
            self._wait_for_send(str(last_id), block_s)

    def _wait_for_send(self, after_id: str, block_s: float) -> None:
        block_ms = max(1, round(block_s * 1000))
        self._conn.call(
            self.name,
            "wait for messages",
            lambda: self._conn.client.xread({self.name: after_id}, count=1, block=block_ms),
        )

    # Acknowledging ---------------------------------------------------------------

    def delete(self, receipt: str) -> None:
        self.delete_batch([receipt])

    def delete_batch(self, receipts: Sequence[str]) -> None:
        args: list[Any] = [GROUP]
        for receipt in receipts:
            parsed = _RECEIPT.match(receipt)
            if parsed is not None:  # anything else is treated like any stale receipt
                args += [parsed[1], parsed[2]]
        if len(args) > 1:
            self._conn.call(
                self.name, "delete", lambda: self._conn.script("delete", [self.name], args)
            )

    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        parsed = _RECEIPT.match(receipt)
        changed = 0
        if parsed is not None:
            args = [
                GROUP,
                self._conn.consumer,
                parsed[1],
                parsed[2],
                _idle_ms(visibility_timeout_s),
            ]
            changed = self._conn.call(
                self.name,
                "change the visibility of a message",
                lambda: self._conn.script("change_visibility", [self.name], args),
            )
        if not changed:
            raise ReceiptInvalid(
                f"receipt {receipt!r} on queue {self.name!r} is stale: the message was "
                "deleted or delivered again since; stop working on it"
            )

    # Inspecting and managing -----------------------------------------------------------

    def stats(self) -> QueueStats:
        keys = [self.name, self._dlq]
        total, pending, expired, oldest_ms, now_ms, dead = self._conn.call(
            self.name, "read stats", lambda: self._conn.script("stats", keys, [GROUP, HORIZON_MS])
        )
        in_flight = max(0, int(pending) - int(expired))
        return QueueStats(
            visible=max(0, int(total) - in_flight),
            in_flight=in_flight,
            oldest_age_s=0.0 if int(oldest_ms) < 0 else max(0.0, (now_ms - oldest_ms) / 1000),
            dead_lettered=int(dead),
        )

    def sibling(self, name: str) -> RedisQueue:
        return RedisQueue(self.url, name, max_receives=self.max_receives, _connection=self._conn)

    def purge(self) -> None:
        self._conn.call(
            self.name, "purge", lambda: self._conn.script("purge", [self.name], [GROUP])
        )

    def destroy(self) -> None:
        """Delete the stream; a send to it later starts a new, empty one."""
        self._conn.forget_group(self.name)
        self._conn.call(
            self.name,
            "delete the stream",
            lambda: self._conn.client.delete(self.name),
            needs_group=False,
        )

    def close(self) -> None:
        if self._owns_connection:
            self._conn.close()


def _idle_ms(visibility_timeout_s: float) -> int:
    """The pending idle time that stands for a visibility timeout (at most 12 hours)."""
    return HORIZON_MS - min(round(visibility_timeout_s * 1000), HORIZON_MS)


def _message(entry: list[Any]) -> Message:
    entry_id, flat, count = str(entry[0]), entry[1], int(entry[2])
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    sent_ms = int(fields.get("t") or entry_id.partition("-")[0])
    return Message(
        id=str(fields.get("i") or entry_id),
        body=str(fields.get("b", "")),
        receipt=f"{entry_id}:{count}",
        receive_count=count,
        sent_at=sent_ms / 1000,
    )
