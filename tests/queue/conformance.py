"""What every Queue backend must do; a backend is done when this suite passes.

Use it by subclassing and providing a ``queue`` fixture that yields a fresh, empty queue
opened with ``max_receives=MAX_RECEIVES``:

    class TestSqliteQueue(QueueConformance):
        @pytest.fixture
        def queue(self, tmp_path: Path) -> Iterator[Queue]:
            q = open_queue(f"sqlite://{tmp_path}/q.db", name="q", max_receives=MAX_RECEIVES)
            yield q
            q.close()

The suite is written to hold for Amazon SQS too: visibility timeouts are whole seconds
>= 1, waits are whole seconds <= 20, no test relies on FIFO order, and a receive may
return fewer messages than asked even when more are visible, so tests loop. Backends
whose statistics lag (SQS's are approximate) raise ``stats_settle_s``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from dlaas.errors import ReceiptInvalid
from dlaas.queue.base import Message, Queue, QueueStats

T = TypeVar("T")

MAX_RECEIVES = 3


def receive_until(
    queue: Queue,
    count: int,
    *,
    visibility_timeout_s: int = 30,
    max_messages: int = 10,
    timeout_s: float = 10.0,
) -> list[Message]:
    """Receive until ``count`` messages arrived (or time is up); never more than asked."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got += queue.receive(
            max_messages=min(max_messages, count - len(got)),
            wait_time_s=1,
            visibility_timeout_s=visibility_timeout_s,
        )
    return got


def receive_one(queue: Queue, *, visibility_timeout_s: int = 30) -> Message:
    (message,) = receive_until(queue, 1, visibility_timeout_s=visibility_timeout_s)
    return message


def eventually(check: Callable[[], T], accept: Callable[[T], bool], timeout_s: float) -> T:
    """Poll ``check`` until ``accept`` holds; return the last value either way."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while not accept(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = check()
    return value


@contextmanager
def siblings(queue: Queue, *suffixes: str) -> Iterator[list[Queue]]:
    """Sibling queues for one test, destroyed afterwards."""
    opened = [queue.sibling(f"{queue.name}-{suffix}") for suffix in suffixes]
    try:
        yield opened
    finally:
        for sibling in opened:
            sibling.destroy()
            sibling.close()


class QueueConformance:
    wait_slack_s: float = 1.0  # how late a timed-out receive may return
    stats_settle_s: float = 2.0  # how long stats may lag behind the truth
    # A standard SQS queue is at-least-once: concurrent receivers may, rarely, both get
    # one message (AWS documents it; moto's threaded server does it too). Workers are
    # built for it (a result is written once, whoever finishes), so there the suite
    # checks that every message arrives and that copies are rare, not that there are none.
    at_least_once: bool = False

    def settled_stats(self, queue: Queue, accept: Callable[[QueueStats], bool]) -> QueueStats:
        return eventually(queue.stats, accept, self.stats_settle_s)

    # send / receive / delete -------------------------------------------------------

    def test_send_receive_delete(self, queue: Queue) -> None:
        before = time.time()
        message_id = queue.send("hello")
        message = receive_one(queue)
        assert message.id == message_id
        assert message.body == "hello"
        assert message.receive_count == 1
        assert message.receipt
        assert before - 60 <= message.sent_at <= time.time() + 60  # other clocks may drift
        queue.delete(message.receipt)
        assert queue.receive(max_messages=10, wait_time_s=1) == []

    def test_body_round_trips_exactly(self, queue: Queue) -> None:
        bodies = [
            json.dumps({"image": "caf\u00e9 \u732b", "n": 1}),
            'line one\nline two\ttab "quoted" \\ backslash',
            "x" * 100_000,
        ]
        queue.send_batch(bodies)
        got = receive_until(queue, len(bodies))
        assert sorted(m.body for m in got) == sorted(bodies)

    def test_send_batch_returns_distinct_ids_in_order(self, queue: Queue) -> None:
        bodies = [f"body-{i}" for i in range(25)]
        ids = queue.send_batch(bodies)
        assert len(ids) == len(bodies) == len(set(ids))
        got = receive_until(queue, len(bodies))
        assert {m.id: m.body for m in got} == dict(zip(ids, bodies, strict=True))

    def test_send_batch_of_nothing_sends_nothing(self, queue: Queue) -> None:
        assert queue.send_batch([]) == []
        assert queue.receive(max_messages=10, wait_time_s=0) == []

    def test_batch_receive_of_many(self, queue: Queue) -> None:
        ids = queue.send_batch([f"m{i}" for i in range(25)])
        batches: list[list[Message]] = []
        deadline = time.monotonic() + 10
        while sum(map(len, batches)) < 25 and time.monotonic() < deadline:
            batch = queue.receive(max_messages=16, wait_time_s=1, visibility_timeout_s=30)
            assert len(batch) <= 16
            batches.append(batch)
        got = [m for batch in batches for m in batch]
        assert sorted(m.id for m in got) == sorted(ids)  # each exactly once
        queue.delete_batch([m.receipt for m in got])
        assert queue.receive(max_messages=10, wait_time_s=1) == []

    def test_delete_batch(self, queue: Queue) -> None:
        queue.send_batch(["a", "b", "c"])
        got = receive_until(queue, 3, visibility_timeout_s=2)
        queue.delete_batch([m.receipt for m in got[:2]])
        # Only the undeleted one comes back once its visibility timeout ends.
        again = receive_until(queue, 1, timeout_s=5)
        assert [m.body for m in again] == [got[2].body]
        assert queue.receive(max_messages=10, wait_time_s=1) == []

    # waiting --------------------------------------------------------------------

    def test_receive_returns_empty_after_the_wait(self, queue: Queue) -> None:
        started = time.monotonic()
        assert queue.receive(max_messages=5, wait_time_s=1) == []
        elapsed_s = time.monotonic() - started
        assert 0.9 <= elapsed_s <= 1 + self.wait_slack_s

    def test_receive_without_wait_returns_at_once(self, queue: Queue) -> None:
        started = time.monotonic()
        assert queue.receive(max_messages=5, wait_time_s=0) == []
        assert time.monotonic() - started <= 0.2 + self.wait_slack_s

    def test_waiting_does_not_burn_cpu(self, queue: Queue) -> None:
        cpu_before, wall_before = time.process_time(), time.monotonic()
        assert queue.receive(max_messages=1, wait_time_s=1) == []
        cpu_s, wall_s = time.process_time() - cpu_before, time.monotonic() - wall_before
        assert wall_s >= 0.9
        assert cpu_s < 0.15, f"waiting 1 s used {cpu_s:.3f} s of CPU: the receive spins"

    def test_a_send_wakes_a_waiting_receiver(self, queue: Queue) -> None:
        result: list[list[Message]] = []
        receiver = threading.Thread(
            target=lambda: result.append(queue.receive(max_messages=1, wait_time_s=10))
        )
        started = time.monotonic()
        receiver.start()
        time.sleep(0.3)
        queue.send("wake up")
        receiver.join(timeout=15)
        elapsed_s = time.monotonic() - started
        assert [m.body for m in result[0]] == ["wake up"]
        assert elapsed_s < 0.3 + self.wait_slack_s, "the receiver slept through the send"

    # visibility -----------------------------------------------------------------

    def test_unacknowledged_message_comes_back_after_visibility_timeout(self, queue: Queue) -> None:
        queue.send("retry me")
        first = receive_one(queue, visibility_timeout_s=1)
        received_at = time.monotonic()
        assert queue.receive(max_messages=1, wait_time_s=0) == []  # hidden meanwhile
        second = receive_one(queue, visibility_timeout_s=30)
        assert time.monotonic() - received_at >= 0.9
        assert second.id == first.id and second.body == "retry me"
        assert second.receive_count == 2
        assert second.receipt != first.receipt
        queue.delete(second.receipt)

    def test_change_visibility_extends_the_lease(self, queue: Queue) -> None:
        queue.send("long job")
        message = receive_one(queue, visibility_timeout_s=1)
        received_at = time.monotonic()
        time.sleep(0.5)
        queue.change_visibility(message.receipt, 2)  # the heartbeat
        time.sleep(max(0.0, received_at + 1.3 - time.monotonic()))
        # Past the first timeout, still hidden thanks to the heartbeat.
        assert queue.receive(max_messages=1, wait_time_s=0) == []
        queue.change_visibility(message.receipt, 0)  # give it back now
        again = receive_one(queue)
        assert again.id == message.id and again.receive_count == 2

    def test_stale_receipt_after_delete(self, queue: Queue) -> None:
        queue.send("once")
        message = receive_one(queue)
        queue.delete(message.receipt)
        queue.delete(message.receipt)  # idempotent
        with pytest.raises(ReceiptInvalid):
            queue.change_visibility(message.receipt, 10)

    def test_stale_receipt_after_redelivery(self, queue: Queue) -> None:
        queue.send("twice")
        first = receive_one(queue, visibility_timeout_s=1)
        second = receive_one(queue, visibility_timeout_s=30)
        assert second.id == first.id
        with pytest.raises(ReceiptInvalid):
            queue.change_visibility(first.receipt, 30)
        queue.delete(first.receipt)  # a slow first worker must not delete the new delivery
        queue.change_visibility(second.receipt, 30)  # still in flight under the new receipt
        queue.delete(second.receipt)
        assert queue.receive(max_messages=1, wait_time_s=1) == []

    def test_receive_arguments_are_checked(self, queue: Queue) -> None:
        with pytest.raises(ValueError):
            queue.receive(max_messages=0)
        with pytest.raises(ValueError):
            queue.receive(max_messages=1, wait_time_s=-1)
        with pytest.raises(ValueError):
            queue.receive(max_messages=1, visibility_timeout_s=-1)

    # dead letters ---------------------------------------------------------------

    def test_dead_letter_after_max_receives(self, queue: Queue) -> None:
        assert queue.dead_letter().name == queue.name + "-dlq"
        message_id = queue.send("poison")
        for attempt in range(1, queue.max_receives + 1):
            message = receive_one(queue)
            assert message.receive_count == attempt
            queue.change_visibility(message.receipt, 0)  # "failed": hand it straight back
        # The next receive moves it to the dead-letter queue instead of delivering it.
        assert queue.receive(max_messages=1, wait_time_s=1) == []
        dlq = queue.dead_letter()
        try:
            dead = receive_one(dlq)
            assert (dead.id, dead.body) == (message_id, "poison")
            stats = self.settled_stats(queue, lambda s: s.dead_lettered == 1)
            assert stats.dead_lettered == 1
            assert (stats.visible, stats.in_flight) == (0, 0)
            dlq.delete(dead.receipt)
        finally:
            dlq.destroy()
            dlq.close()

    def test_delivery_below_the_limit_is_not_dead_lettered(self, queue: Queue) -> None:
        queue.send("flaky")
        for _ in range(queue.max_receives - 1):
            queue.change_visibility(receive_one(queue).receipt, 0)
        last = receive_one(queue)
        assert last.receive_count == queue.max_receives
        queue.delete(last.receipt)
        assert queue.stats().dead_lettered == 0

    # stats ----------------------------------------------------------------------

    def test_stats_of_an_empty_queue(self, queue: Queue) -> None:
        stats = queue.stats()
        assert stats == QueueStats(visible=0, in_flight=0, oldest_age_s=0.0, dead_lettered=0)

    def test_stats_count_visible_and_in_flight(self, queue: Queue) -> None:
        queue.send_batch(["a", "b", "c"])
        time.sleep(1.1)
        stats = self.settled_stats(queue, lambda s: s.visible == 3)
        assert (stats.visible, stats.in_flight) == (3, 0)
        assert 1.0 <= stats.oldest_age_s < 60
        message = receive_one(queue)
        stats = self.settled_stats(queue, lambda s: s.in_flight == 1)
        assert (stats.visible, stats.in_flight) == (2, 1)
        queue.delete(message.receipt)
        stats = self.settled_stats(queue, lambda s: s.in_flight == 0)
        assert (stats.visible, stats.in_flight) == (2, 0)

    # siblings, purge, destroy ---------------------------------------------------------

    def test_sibling_with_the_same_name_is_the_same_queue(self, queue: Queue) -> None:
        twin = queue.sibling(queue.name)
        try:
            message_id = twin.send("via twin")
            assert receive_one(queue).id == message_id
        finally:
            twin.close()

    def test_sibling_queues_are_independent(self, queue: Queue) -> None:
        with siblings(queue, "a", "b") as (a, b):
            a.send("for a")
            b.send("for b")
            assert queue.receive(max_messages=10, wait_time_s=1) == []
            assert [m.body for m in receive_until(a, 1)] == ["for a"]
            assert [m.body for m in receive_until(b, 1)] == ["for b"]
            assert a.receive(max_messages=10, wait_time_s=0) == []

    def test_purge_drops_every_message(self, queue: Queue) -> None:
        queue.send_batch([f"m{i}" for i in range(5)])
        receive_one(queue)  # in flight messages go too
        queue.purge()
        assert queue.receive(max_messages=10, wait_time_s=1) == []
        stats = self.settled_stats(queue, lambda s: s.visible + s.in_flight == 0)
        assert (stats.visible, stats.in_flight) == (0, 0)

    def test_destroy_leaves_other_queues_alone(self, queue: Queue) -> None:
        with siblings(queue, "gone", "kept") as (gone, kept):
            gone.send("x")
            kept.send("y")
            gone.destroy()
            assert [m.body for m in receive_until(kept, 1)] == ["y"]

    # concurrency ----------------------------------------------------------------

    def test_concurrent_receivers_share_the_work(self, queue: Queue) -> None:
        ids = set(queue.send_batch([f"job-{i}" for i in range(60)]))
        seen: list[str] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        deadline = time.monotonic() + 25

        def work() -> None:
            # An empty receive is not the end: SQS may answer empty while
            # messages remain (a loaded server, a sampled short poll), so each
            # receiver keeps going until every message has been seen.
            try:
                while time.monotonic() < deadline:
                    with lock:
                        if len(set(seen)) >= len(ids):
                            return
                    batch = queue.receive(max_messages=5, wait_time_s=1, visibility_timeout_s=30)
                    with lock:
                        seen.extend(m.id for m in batch)
                    if batch:
                        queue.delete_batch([m.receipt for m in batch])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        assert set(seen) == ids  # every message
        copies = len(seen) - len(ids)
        if self.at_least_once:
            assert copies <= len(ids) // 10, f"{copies} of {len(ids)} messages delivered twice"
        else:
            assert copies == 0, sorted(i for i in set(seen) if seen.count(i) > 1)
