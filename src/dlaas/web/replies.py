"""Result delivery to this web process: one reply queue per process, one reader thread.

Each task names this process's reply queue (``dlaas-replies-<id>``); workers send a
small notification there once the result is stored. The reader thread long-polls the
queue and wakes whoever waits in the event loop: a synchronous request's future or a
job's event-stream subscribers. Several web processes can share a store and queue
because each reads only its own replies; any of them can serve ``GET`` from storage.

A synchronous call asks for its result inside the reply, so no result file is written
or read. The hub is the one writer of those results: a reply that finds nobody waiting
(the call timed out and told its client to poll) is stored as a file before its message
is deleted, so it is never lost; so are the results a timed-out call already took.

Reply queues of web processes that died are removed by the others: each hub refreshes
its ``reply_queue_key`` record every ``refresh_s`` and, at start and on every refresh,
looks for records older than ``stale_after_s``, which mark a queue as abandoned. Results
still inside such a queue are stored first, so a replica lost under load costs no result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from dlaas.errors import DlaasError
from dlaas.jobs import layout
from dlaas.jobs.messages import Finished, Progress, Reply, reply_from_json
from dlaas.jobs.records import ReplyQueueRecord, as_reply_queue
from dlaas.jobs.store import JobStore
from dlaas.queue.base import Message, Queue

log = logging.getLogger("dlaas.web")

REPLY_PREFIX = "dlaas-replies-"
HANDOVER_TIMEOUT_S = 10.0  # the event loop is stuck if it takes longer to dispatch
STALE_AFTER_S = 90.0  # three missed refreshes of the default 30 s


class ReplyHub:
    def __init__(
        self,
        jobs: JobStore,
        *,
        wait_time_s: float = 1.0,
        refresh_s: float = 30.0,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.name = REPLY_PREFIX + layout.new_id()[:16]
        self.jobs = jobs
        self.storage = jobs.storage
        self.input_queue = jobs.queue
        self.queue = jobs.queue.sibling(self.name)
        self.wait_time_s = wait_time_s
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self._waiters: dict[str, asyncio.Future[Finished]] = {}
        self._subscribers: defaultdict[str, set[asyncio.Queue[Reply]]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_reply: Callable[[Reply], None] | None = None  # metrics hook
        # Each final reply found in an abandoned queue (the owner backlog releases it).
        self.on_salvaged: Callable[[Reply], None] | None = None

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
            stale: ReplyQueueRecord = {"queue": self.name, "updated_at": 0.0}
            self.storage.put_json(layout.reply_queue_key(self.name), stale)
        except DlaasError as exc:
            log.warning("reply_hub_cleanup_failed", extra={"error": str(exc)})

    # Event-loop side ---------------------------------------------------------

    def expect(self, image_id: str) -> asyncio.Future[Finished]:
        """Register interest before enqueueing, so a fast reply cannot be missed."""
        assert self._loop is not None, "ReplyHub.start() was not called"
        future: asyncio.Future[Finished] = self._loop.create_future()
        self._waiters[image_id] = future
        return future

    def forget(self, image_id: str) -> None:
        self._waiters.pop(image_id, None)

    def subscribe(self, job_id: str) -> asyncio.Queue[Reply]:
        inbox: asyncio.Queue[Reply] = asyncio.Queue()
        self._subscribers[job_id].add(inbox)
        return inbox

    def unsubscribe(self, job_id: str, inbox: asyncio.Queue[Reply]) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(inbox)
            if not subs:
                del self._subscribers[job_id]

    def _dispatch(self, replies: list[Reply]) -> list[Finished]:
        """Wake the waiters; return the results that nobody took and nobody stored."""
        unclaimed = []
        for reply in replies:
            if self.on_reply is not None:
                self.on_reply(reply)
            if isinstance(reply, Finished):
                future = self._waiters.pop(reply.image_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
                elif not reply.stored:
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
        replies: dict[str, Reply] = {}  # receipt -> reply
        for message in messages:
            try:
                replies[message.receipt] = reply_from_json(message.body)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("malformed_reply", extra={"error": str(exc)})
        unclaimed = self._hand_over(list(replies.values())) if replies else []
        unsafe = {id(r) for r in unclaimed if not self._store(r)}
        keep = {receipt for receipt, r in replies.items() if id(r) in unsafe}
        try:
            self.queue.delete_batch([m.receipt for m in messages if m.receipt not in keep])
        except DlaasError as exc:
            log.warning("reply_delete_failed", extra={"error": str(exc)})

    def _hand_over(self, replies: list[Reply]) -> list[Finished]:
        """Run ``_dispatch`` on the event loop and wait for it, to learn what was unclaimed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return _unstored(replies)
        handed: concurrent.futures.Future[list[Finished]] = concurrent.futures.Future()

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
            return _unstored(replies)

    def store_unclaimed(self, replies: list[Finished]) -> None:
        """Store results taken off the queue by a call that no longer waits for them."""
        for reply in _unstored(replies):
            self._store(reply)

    def _store(self, reply: Finished) -> bool:
        """Store an inline result as its file; False if storage refused (try again later)."""
        try:
            self.jobs.put_result(reply.result)
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
                    reply = reply_from_json(message.body)
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(reply, Finished) and not reply.stored:
                    self._store(reply)
                if self.on_salvaged is not None and not isinstance(reply, Progress):
                    self.on_salvaged(reply)
            queue.delete_batch([m.receipt for m in messages])

    # Stale reply queues ------------------------------------------------------

    def _register(self) -> None:
        try:
            record: ReplyQueueRecord = {"queue": self.name, "updated_at": time.time()}
            self.storage.put_json(layout.reply_queue_key(self.name), record)
        except DlaasError as exc:
            log.warning("reply_register_failed", extra={"error": str(exc)})

    def _clean_stale(self) -> None:
        """Remove the reply queues of web processes that stopped refreshing their record.

        A dead process's queue is cleaned twice: when its record goes stale, and once more
        ``10 * stale_after_s`` later for the replies workers sent it meanwhile (tasks it
        enqueued may wait in the backlog); then its record is deleted.
        """
        try:
            keys = self.storage.list(layout.REPLIES)
        except DlaasError:
            return
        now = time.time()
        for key in keys:
            try:
                record = as_reply_queue(self.storage.get_json(key))
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
                    cleaned: ReplyQueueRecord = {**record, "cleaned_at": now}
                    self.storage.put_json(key, cleaned)
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


def _unstored(replies: list[Reply] | list[Finished]) -> list[Finished]:
    """The results that travel only inside their reply (a synchronous call's)."""
    return [r for r in replies if isinstance(r, Finished) and not r.stored]
