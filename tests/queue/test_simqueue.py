"""SimQueue: the conformance suite on a real clock, plus its life on a virtual clock."""

from __future__ import annotations

import time

import pytest

from dlaas.errors import ReceiptInvalid
from dlaas.queue.base import Queue
from dlaas.scaling.sim.queue import SimQueue

from .conformance import MAX_RECEIVES, QueueConformance


class TestSimQueue(QueueConformance):
    wait_slack_s = 0.3

    @pytest.fixture
    def queue(self) -> Queue:
        return SimQueue(time.time, name="q", max_receives=MAX_RECEIVES)


def test_visibility_and_dead_letters_follow_a_virtual_clock() -> None:
    now = [0.0]
    queue = SimQueue(lambda: now[0], max_receives=2)
    queue.send_batch(["a", "b"])
    (first,) = queue.receive(1, visibility_timeout_s=10)
    assert (queue.stats().visible, queue.stats().in_flight) == (1, 1)
    now[0] = 11.0  # the visibility timeout passes: "a" comes back
    assert queue.stats().visible == 2
    with pytest.raises(ReceiptInvalid):
        queue.change_visibility(first.receipt, 5)
    (again,) = queue.receive(1, visibility_timeout_s=0)
    assert (again.body, again.receive_count) == ("a", 2)
    assert [m.body for m in queue.receive(5, visibility_timeout_s=1)] == ["b"]  # "a" is dead
    assert queue.stats().dead_lettered == 1
    assert queue.stats().oldest_age_s == 11.0
    (dead,) = queue.dead_letter().receive(1)
    assert (dead.id, dead.body, dead.receive_count) == (first.id, "a", 1)


def test_a_dead_letter_queue_keeps_its_messages() -> None:
    """Like SQS, a DLQ has no DLQ of its own: its messages are never moved on."""
    dlq = SimQueue(time.time, name="q-dlq", max_receives=1)
    dlq.send("parked")
    for _ in range(3):
        (message,) = dlq.receive(max_messages=1)
        dlq.change_visibility(message.receipt, 0)
    assert message.receive_count == 3


def test_the_virtual_clock_does_not_move_while_a_receive_waits() -> None:
    """Only the event loop moves a virtual clock; a waiting receive times out in real time."""
    queue = SimQueue(lambda: 0.0)
    queue.send("hidden")
    queue.receive(1, visibility_timeout_s=5)
    started = time.monotonic()
    assert queue.receive(1, wait_time_s=0.2) == []
    assert 0.15 <= time.monotonic() - started < 1.0
