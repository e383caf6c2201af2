"""Result delivery to this web process: one reply queue per process, one reader thread.

Each task names this process's reply queue (``dlaas-replies-<id>``); workers send a
small notification there once the result is stored. The reader thread long-polls the
queue and wakes whoever waits in the event loop: a synchronous request's future or a
job's event-stream subscribers. Several web processes can share a store and queue
because each reads only its own replies; any of them can serve ``GET`` from storage.

A synchronous call asks for its result inside the reply, so no result file is written
or read. Such a reply that finds nobody waiting (the call timed out and told its client
to poll) is stored as a file before its message is deleted, so it is never lost.

Reply queues of web processes that died are removed by the others: each hub refreshes
``replies/<name>.json`` every ``refresh_s`` and, at start and on every refresh, looks for
records older than ``stale_after_s``, which mark a queue as abandoned. Results still
inside such a queue are stored first, so a replica lost under load costs no result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from dlaas import protocol
from dlaas.errors import DlaasError
from dlaas.queue.base import Message, Queue
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.web")

REPLY_PREFIX = "dlaas-replies-"
HANDOVER_TIMEOUT_S = 10.0  # the event loop is stuck if it takes longer to dispatch
STALE_AFTER_S = 90.0  # three missed refreshes of the default 30 s


class ReplyHub:
    def __init__(
        self,
        input_queue: Queue,
        storage: Storage,
        *,
        wait_time_s: float = 1.0,
        refresh_s: float = 30.0,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.name = REPLY_PREFIX + protocol.new_id()[:16]
        self.queue = input_queue.sibling(self.name)
        self.input_queue = input_queue
        self.storage = storage
        self.wait_time_s = wait_time_s
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self._waiters: dict[str, asyncio.Future[protocol.Reply]] = {}
        self._subscribers: defaultdict[str, set[asyncio.Queue[protocol.Reply]]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.on_reply: Callable[[protocol.Reply], None] | None = None  # metrics hook
        # Each final reply found in an abandoned queue (the owner backlog releases it).
        self.on_salvaged: Callable[[protocol.Reply], None] | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._register()
        self._clean_stale()
        self._thread = threading.Thread(target=self._run, name="reply-hub", daemon=True)
        self._thread.start()
        log.info("reply_hub_started", extra={"reply_queue": self.name})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.wait_time_s + 5)
        try:
            self._salvage(self.queue)
            self.queue.destroy()
            # Mark the record stale rather than delete it: workers finishing their last
            # batch may still reply here, and the next web process to start then removes
            # those stragglers along with the queue.
            self.storage.put_json(
                self._record_key(self.name), {"queue": self.name, "updated_at": 0.0}
            )
        except DlaasError as exc:
            log.warning("reply_hub_cleanup_failed", extra={"error": str(exc)})

    # Event-loop side ---------------------------------------------------------

    def expect(self, image_id: str) -> asyncio.Future[protocol.Reply]:
        """Register interest before enqueueing, so a fast reply cannot be missed."""
        assert self._loop is not None, "ReplyHub.start() was not called"
        future: asyncio.Future[protocol.Reply] = self._loop.create_future()
        self._waiters[image_id] = future
        return future

    def forget(self, image_id: str) -> None:
        self._waiters.pop(image_id, None)

    def subscribe(self, job_id: str) -> asyncio.Queue[protocol.Reply]:
        inbox: asyncio.Queue[protocol.Reply] = asyncio.Queue()
        self._subscribers[job_id].add(inbox)
        return inbox

    def unsubscribe(self, job_id: str, inbox: asyncio.Queue[protocol.Reply]) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(inbox)
            if not subs:
                del self._subscribers[job_id]

    def _dispatch(self, replies: list[protocol.Reply]) -> list[protocol.Reply]:
        """Wake the waiters; return the replies carrying a result that nobody took."""
        unclaimed = []
        for reply in replies:
            if self.on_reply is not None:
                self.on_reply(reply)
            if reply.status != "classifying":
                future = self._waiters.pop(reply.image_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
                elif reply.result is not None:
                    unclaimed.append(reply)
            for inbox in self._subscribers.get(reply.job_id, ()):
                inbox.put_nowait(reply)
        return unclaimed

    # Reader thread -----------------------------------------------------------

    def _run(self) -> None:
        next_refresh = time.monotonic() + self.refresh_s
        while not self._stop.is_set():
            try:
                messages = self.queue.receive(
                    max_messages=100, wait_time_s=self.wait_time_s, visibility_timeout_s=30
                )
            except DlaasError as exc:
                log.warning("reply_receive_failed", extra={"error": str(exc)})
                self._stop.wait(1.0)
                continue
            if messages:
                self._handle(messages)
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self.refresh_s
                self._register()
                self._clean_stale()

    def _handle(self, messages: list[Message]) -> None:
        """Dispatch, store the results nobody took, then delete what is safe to delete."""
        replies: dict[str, protocol.Reply] = {}  # receipt -> reply
        for message in messages:
            try:
                replies[message.receipt] = protocol.Reply.from_json(message.body)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("malformed_reply", extra={"error": str(exc)})
        unclaimed = self._hand_over(list(replies.values())) if replies else []
        self.delivered += len(replies)
        unsafe = {id(r) for r in unclaimed if not self._store(r)}
        keep = {receipt for receipt, r in replies.items() if id(r) in unsafe}
        try:
            self.queue.delete_batch([m.receipt for m in messages if m.receipt not in keep])
        except DlaasError as exc:
            log.warning("reply_delete_failed", extra={"error": str(exc)})

    def _hand_over(self, replies: list[protocol.Reply]) -> list[protocol.Reply]:
        """Run ``_dispatch`` on the event loop and wait for it, to learn what was unclaimed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return [r for r in replies if r.result is not None]
        handed: concurrent.futures.Future[list[protocol.Reply]] = concurrent.futures.Future()

        def run() -> None:
            try:
                handed.set_result(self._dispatch(replies))
            except BaseException as exc:  # pragma: no cover - a bug in a hook
                handed.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
            return handed.result(timeout=HANDOVER_TIMEOUT_S)
        except (RuntimeError, concurrent.futures.TimeoutError):
            # The loop is closing or stuck: keep every result, a duplicate write is harmless.
            return [r for r in replies if r.result is not None]

    def _store(self, reply: protocol.Reply) -> bool:
        """Store an inline result as its file; False if storage refused (try again later)."""
        try:
            self.storage.put_json(reply.result_key, reply.result)
        except DlaasError as exc:
            log.warning("reply_store_failed", extra={"image_id": reply.image_id, "error": str(exc)})
            return False
        return True

    def _salvage(self, queue: Queue) -> None:
        """Store the inline results still in ``queue`` before it is destroyed."""
        for _ in range(1000):  # bounded: a queue someone keeps filling is not ours to drain
            messages = queue.receive(max_messages=100, wait_time_s=0, visibility_timeout_s=30)
            if not messages:
                return
            for message in messages:
                try:
                    reply = protocol.Reply.from_json(message.body)
                except (ValueError, KeyError, TypeError):
                    continue
                if reply.result is not None:
                    self._store(reply)
                if self.on_salvaged is not None and reply.status != "classifying":
                    self.on_salvaged(reply)
            queue.delete_batch([m.receipt for m in messages])

    # Stale reply queues ------------------------------------------------------

    @staticmethod
    def _record_key(name: str) -> str:
        return f"replies/{name}.json"

    def _register(self) -> None:
        try:
            self.storage.put_json(
                self._record_key(self.name), {"queue": self.name, "updated_at": time.time()}
            )
        except DlaasError as exc:
            log.warning("reply_register_failed", extra={"error": str(exc)})

    def _clean_stale(self) -> None:
        """Remove the reply queues of web processes that stopped refreshing their record.

        A dead process's queue is cleaned twice: when its record goes stale, and once more
        ``10 * stale_after_s`` later for the replies workers sent it meanwhile (tasks it
        enqueued may wait in the backlog); then its record is deleted.
        """
        try:
            keys = self.storage.list("replies/")
        except DlaasError:
            return
        now = time.time()
        for key in keys:
            try:
                record = self.storage.get_json(key)
                name = str(record["queue"])
                if not name.startswith(REPLY_PREFIX) or name == self.name:
                    continue
                cleaned_at = record.get("cleaned_at")
                if cleaned_at is None:
                    if now - float(record["updated_at"]) < self.stale_after_s:
                        continue
                elif now - float(cleaned_at) < 10 * self.stale_after_s:
                    continue
                self._remove_queue(name)
                if cleaned_at is None and float(record["updated_at"]) > 0:
                    self.storage.put_json(key, {**record, "cleaned_at": now})
                else:  # a clean stop (updated_at 0) or the second pass
                    self.storage.delete(key)
                log.info("stale_reply_queue_removed", extra={"reply_queue": name})
            except (DlaasError, KeyError, ValueError, TypeError):
                continue

    def _remove_queue(self, name: str) -> None:
        stale = self.input_queue.sibling(name)
        try:
            self._salvage(stale)
            stale.destroy()
        finally:
            stale.close()
