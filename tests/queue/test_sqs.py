"""SqsQueue: the conformance suite on moto's server, plus what is special to SQS."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dlaas.errors import ConfigError, QueueError
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.queue.sqs import SqsQueue
from dlaas.queue.sqs_age import SendLog
from dlaas.queue.sqs_api import chunks

from ..aws.servers import (  # noqa: F401 - fixtures
    Endpoint,
    fixture_aws_env,
    fixture_moto,
    fixture_moto_server,
)
from .conformance import MAX_RECEIVES, QueueConformance, receive_until

MOTO_RECEIPTS = (
    "moto accepts a superseded receipt handle for change_message_visibility and "
    "delete_message; SQS itself does not (the newest receipt is the only valid one)"
)


class TestSqsMoto(QueueConformance):
    wait_slack_s = 1.0
    stats_settle_s = 2.0
    at_least_once = True

    @pytest.fixture
    def queue(self, moto: Endpoint) -> Iterator[Queue]:
        queue = open_queue(
            "sqs://q", endpoint_url=moto.url, region=moto.region,
            max_receives=MAX_RECEIVES, create=True,
        )  # fmt: skip
        yield queue
        queue.close()

    @pytest.mark.xfail(strict=True, reason=MOTO_RECEIPTS)
    def test_stale_receipt_after_redelivery(self, queue: Queue) -> None:
        super().test_stale_receipt_after_redelivery(queue)


def _open(moto: Endpoint, url: str = "sqs://dlaas-input", **options: Any) -> SqsQueue:
    queue = open_queue(url, endpoint_url=moto.url, region=moto.region, **options)
    assert isinstance(queue, SqsQueue)
    return queue


# Opening ----------------------------------------------------------------------------


def test_missing_queue_is_refused_at_start(moto: Endpoint) -> None:
    with pytest.raises(ConfigError, match=r"queue 'dlaas-input' does not exist.*create it"):
        _open(moto)


def test_create_makes_the_queue_its_dlq_and_the_redrive_policy(moto: Endpoint) -> None:
    queue = _open(moto, max_receives=4, create=True)
    sqs: Any = moto.client("sqs")
    dlq_url = sqs.get_queue_url(QueueName="dlaas-input-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    policy = sqs.get_queue_attributes(QueueUrl=queue.queue_url, AttributeNames=["RedrivePolicy"])
    redrive = json.loads(policy["Attributes"]["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 4
    assert queue.max_receives == 4


def test_an_existing_queue_keeps_its_own_redrive_policy(moto: Endpoint) -> None:
    """As the stack creates it: the queue's maxReceiveCount wins over the setting."""
    sqs: Any = moto.client("sqs")
    dlq_url = sqs.create_queue(QueueName="stack-dead")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": "2"}
    sqs.create_queue(QueueName="stack-input", Attributes={"RedrivePolicy": json.dumps(policy)})
    queue = _open(moto, "sqs://stack-input", max_receives=7)
    assert queue.max_receives == 2
    assert queue.dead_letter().name == "stack-dead"
    queue.send("poison")
    for _ in range(2):
        (message,) = receive_until(queue, 1)
        queue.change_visibility(message.receipt, 0)
    assert queue.receive(max_messages=1, wait_time_s=1) == []
    assert queue.stats().dead_lettered == 1


def test_queue_url_forms(moto: Endpoint) -> None:
    created = SqsQueue("dlaas-input", endpoint_url=moto.url, region="eu-west-1", create=True)
    created.send("hello")
    # An AWS queue URL names the region; the endpoint (moto here) may still be given.
    by_url = open_queue(
        "https://sqs.eu-west-1.amazonaws.com/123456789012/dlaas-input", endpoint_url=moto.url
    )
    assert isinstance(by_url, SqsQueue)
    assert (by_url.name, by_url.client.meta.region_name) == ("dlaas-input", "eu-west-1")
    assert [m.body for m in receive_until(by_url, 1)] == ["hello"]
    # sqs:// alone takes the name from the caller (the --queue-name setting).
    assert _open(moto, "sqs://", name="other", create=True).name == "other"


def test_endpoint_from_the_sdk_variable(moto: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    _open(moto, create=True).send("via endpoint option")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto.url)
    queue = open_queue("sqs://dlaas-input", endpoint_url=None, region=None)
    assert [m.body for m in receive_until(queue, 1)] == ["via endpoint option"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqs://bad.name", "queue name 'bad.name' is invalid"),
        ("sqs://q?region=x", "takes none"),
        ("https://example.com/not-a-queue", "is not an SQS queue URL"),
    ],
)
def test_bad_urls_are_refused(aws_env: None, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_queue(url)


def test_no_region_is_a_clear_error(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match="--aws-region"):
        open_queue("sqs://q")


# Receiving ----------------------------------------------------------------------------


def test_a_batch_above_ten_is_filled_from_several_receives(moto: Endpoint) -> None:
    queue = _open(moto, create=True)
    queue.send_batch([f"m{i}" for i in range(25)])
    got = queue.receive(max_messages=16, wait_time_s=1)
    assert len(got) == 16  # moto returns every visible message it is asked for
    assert len({m.id for m in got}) == 16


def test_batch_fill_does_not_wait_once_a_message_is_in_hand(moto: Endpoint) -> None:
    queue = _open(moto, create=True)
    queue.send_batch(["a", "b"])
    started = time.monotonic()
    got = queue.receive(max_messages=50, wait_time_s=10)
    assert len(got) == 2
    assert time.monotonic() - started < 1.0


def test_a_wait_longer_than_sqs_allows_is_split(
    moto: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQS caps one poll at 20 s: a longer wait is several polls that fill the budget."""
    queue = _open(moto, create=True)
    now = [1000.0]
    waits: list[int] = []

    def empty_poll(**kwargs: Any) -> dict[str, Any]:
        waits.append(kwargs["WaitTimeSeconds"])
        now[0] += kwargs["WaitTimeSeconds"]  # the poll took its whole wait
        return {}

    monkeypatch.setattr("dlaas.queue.sqs.time.monotonic", lambda: now[0])
    monkeypatch.setattr(queue.client, "receive_message", empty_poll)
    assert queue.receive(max_messages=1, wait_time_s=45) == []
    assert waits == [20, 20, 5]
    waits.clear()
    assert queue.receive(max_messages=1, wait_time_s=0.3) == []
    assert waits == [0]  # under a second: one poll that does not wait


def test_visibility_is_rounded_up_to_whole_seconds(moto: Endpoint) -> None:
    queue = _open(moto, create=True)
    queue.send("x")
    (message,) = receive_until(queue, 1, visibility_timeout_s=30)
    queue.change_visibility(message.receipt, 0.2)  # becomes 1 s, not 0 s
    assert queue.receive(max_messages=1, wait_time_s=0) == []
    assert [m.id for m in receive_until(queue, 1, timeout_s=5)] == [message.id]


def test_sent_at_and_receive_count_come_from_sqs(moto: Endpoint) -> None:
    queue = _open(moto, create=True)
    before = time.time()
    queue.send("x")
    (message,) = receive_until(queue, 1, visibility_timeout_s=1)
    assert before - 1 <= message.sent_at <= time.time() + 1
    assert message.receive_count == 1


# Sending ------------------------------------------------------------------------------


def test_send_batch_respects_sqs_batch_limits() -> None:
    bodies = ["x" * 100_000, "y" * 100_000, "z" * 100_000, *["s"] * 12]
    batches = chunks(bodies)
    assert [b for chunk in batches for b in chunk] == bodies
    assert all(len(c) <= 10 for c in batches)
    assert all(sum(len(b) for b in c) <= 256 * 1024 for c in batches)


def test_refused_messages_raise(moto: Endpoint) -> None:
    queue = _open(moto, create=True)
    with pytest.raises(QueueError, match="SQS"):
        queue.send_batch(["ok", "x" * (1024 * 1024 + 1)])


# Stats --------------------------------------------------------------------------------


def test_oldest_age_follows_this_process_sends() -> None:
    log = SendLog()
    log.sent(3, at=100.0)
    log.sent(2, at=110.0)
    assert log.oldest_age_s(5, now=120.0) == 20.0  # all five wait: the first send's age
    assert log.oldest_age_s(2, now=121.0) == 11.0  # three consumed: the second send's age
    assert log.oldest_age_s(0, now=122.0) == 0.0  # empty resets
    assert log.oldest_age_s(4, now=130.0) == 0.0  # unknown senders: seen from now on
    assert log.oldest_age_s(4, now=135.0) == 5.0


# Siblings and reply queues ------------------------------------------------------------


def test_sibling_is_created_on_demand_without_a_dlq(moto: Endpoint) -> None:
    queue = _open(moto, create=True)
    replies = queue.sibling("dlaas-replies-abc")
    replies.send("done")
    assert [m.body for m in receive_until(replies, 1)] == ["done"]
    sqs: Any = moto.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=replies.url, AttributeNames=["All"])
    assert "RedrivePolicy" not in attributes["Attributes"]
    replies.destroy()
    names = [u.rsplit("/", 1)[-1] for u in sqs.list_queues().get("QueueUrls", [])]
    assert "dlaas-replies-abc" not in names
    replies.destroy()  # already gone: fine


def test_closing_a_sibling_keeps_the_shared_client_open(moto: Endpoint) -> None:
    queue = _open(moto, create=True)
    sibling = queue.sibling("other")
    sibling.close()
    queue.send("still works")
    assert [m.body for m in receive_until(queue, 1)] == ["still works"]


def test_destroying_a_sibling_that_is_gone_does_not_create_it(moto: Endpoint) -> None:
    """How a web process removes a dead process's reply queue that no longer exists."""
    queue = _open(moto, create=True)
    queue.sibling("dlaas-replies-gone").destroy()
    sqs: Any = moto.client("sqs")
    names = [u.rsplit("/", 1)[-1] for u in sqs.list_queues().get("QueueUrls", [])]
    assert "dlaas-replies-gone" not in names
