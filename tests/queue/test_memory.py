"""MemoryQueue: the conformance suite, plus URL parsing and in-process sharing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dlaas.errors import ConfigError
from dlaas.queue import DEFAULT_QUEUE_NAME, open_queue
from dlaas.queue.base import Queue
from dlaas.queue.memory import MemoryQueue

from .conformance import MAX_RECEIVES, QueueConformance


class TestMemoryQueue(QueueConformance):
    wait_slack_s = 0.3

    @pytest.fixture
    def queue(self) -> Queue:
        return open_queue(f"memory://{uuid.uuid4().hex}", name="q", max_receives=MAX_RECEIVES)


def test_same_broker_and_name_is_the_same_queue() -> None:
    broker = uuid.uuid4().hex
    first = open_queue(f"memory://{broker}?name=jobs")
    second = open_queue(f"memory://{broker}", name="jobs")
    other_broker = open_queue(f"memory://{uuid.uuid4().hex}?name=jobs")
    message_id = first.send("x")
    assert [m.id for m in second.receive(max_messages=1)] == [message_id]
    assert other_broker.stats().visible == 0


def test_name_comes_from_argument_then_url_then_default() -> None:
    broker = uuid.uuid4().hex
    assert open_queue(f"memory://{broker}?name=from-url", name="from-arg").name == "from-arg"
    assert open_queue(f"memory://{broker}?name=from-url").name == "from-url"
    queue = open_queue(f"memory://{broker}")
    assert queue.name == DEFAULT_QUEUE_NAME == "dlaas-input"
    assert isinstance(queue, MemoryQueue)
    assert queue.max_receives == 5
    assert open_queue(queue.url).name == queue.name


def test_one_receive_fills_a_batch_of_sixteen() -> None:
    queue = open_queue(f"memory://{uuid.uuid4().hex}")
    queue.send_batch([str(i) for i in range(25)])
    assert len(queue.receive(max_messages=16)) == 16
    assert len(queue.receive(max_messages=16)) == 9


def test_destroyed_queue_starts_empty_when_reopened() -> None:
    queue = open_queue(f"memory://{uuid.uuid4().hex}?name=replies-1")
    queue.send("old")
    queue.destroy()
    assert queue.sibling("replies-1").receive(max_messages=1) == []


def test_a_dead_letter_queue_keeps_its_messages() -> None:
    """Like SQS, a DLQ has no DLQ of its own: its messages are never moved on."""
    dlq = open_queue(f"memory://{uuid.uuid4().hex}?name=q-dlq", max_receives=1)
    dlq.send("parked")
    for _ in range(3):
        (message,) = dlq.receive(max_messages=1)
        dlq.change_visibility(message.receipt, 0)
    assert message.receive_count == 3


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        (
            "amqp://localhost/0",
            {},
            "accepted schemes: memory://, sqlite://, sqs://, https://, redis://, rediss://",
        ),
        ("memory://b?name=bad name", {}, "queue name 'bad name' is invalid"),
        ("memory://b?name=" + "x" * 81, {}, "is invalid"),
        ("memory://b", {"max_receives": 0}, "max_receives must be a whole number >= 1"),
        ("memory://b", {"poll_interval_s": 1}, "does not take option"),
        ("memory://b?nmae=q", {}, r"unknown parameter\(s\) nmae"),
    ],
)
def test_bad_urls_and_options_are_config_errors(
    url: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        open_queue(url, **options)
