"""The figure KEDA scales the workers on, read from a real Redis under the real queue.

KEDA itself cannot run here. Its redis-streams scaler reads one Redis figure, chosen by
the trigger's metadata (KEDA's scaler docs): ``streamLength`` is ``XLEN`` of the stream,
``pendingEntriesCount`` the consumer group's pending entries (``XPENDING``), ``lagCount``
the group's lag (``XINFO GROUPS``). The trigger is taken from deploy/k8s/redis.yaml, the
figure it names is read as the scaler reads it, and it must follow the backlog: up with
every message sent, still counting the messages in a worker's hands, down only as they
are done, and 0 at the end, so the workers scale to zero and wake on the next upload.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.queue.redis_client import GROUP
from tests.deploy.manifests import K8S, by_kind, render

from .redis_server import RedisServer, fixture_redis_server  # noqa: F401 - fixture

FIGURES = ("streamLength", "pendingEntriesCount", "lagCount")


def keda_trigger() -> dict[str, str]:
    (trigger,) = by_kind(render(K8S), "ScaledObject")["dlaas-worker"]["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    return dict(trigger["metadata"])


def keda_reading(admin: Any, metadata: dict[str, str], stream: str) -> int:
    """What the scaler would read for ``metadata``, on ``stream``."""
    (figure,) = [name for name in FIGURES if name in metadata]
    if figure == "streamLength":
        return int(admin.xlen(stream))
    group = metadata["consumerGroup"]
    if figure == "pendingEntriesCount":
        return int(admin.xpending(stream, group)["pending"])
    (info,) = [g for g in admin.xinfo_groups(stream) if g["name"] == group]
    return int(info["lag"])


@pytest.fixture
def queue(redis_server: RedisServer) -> Any:
    name = f"keda-{uuid.uuid4().hex[:8]}"
    queue = open_queue(f"{redis_server.url}?stream={name}")
    yield queue
    queue.destroy()
    queue.close()


def test_the_trigger_watches_the_queues_own_stream_and_group() -> None:
    metadata = keda_trigger()
    assert [name for name in FIGURES if name in metadata], metadata
    assert metadata.get("consumerGroup", GROUP) == GROUP


def test_the_keda_figure_follows_the_backlog_up_and_back_to_zero(
    queue: Queue, redis_server: RedisServer
) -> None:
    metadata = keda_trigger()
    admin = redis_server.admin()
    reading = lambda: keda_reading(admin, metadata, queue.name)  # noqa: E731

    assert reading() == 0  # nothing to do: KEDA keeps the workers at zero
    queue.send_batch([f"task-{i}" for i in range(20)])
    assert reading() == 20  # waiting messages wake the workers

    # Two workers take a batch each: in their hands, the messages still count.
    first = queue.receive(max_messages=8, wait_time_s=1, visibility_timeout_s=30)
    second = queue.receive(max_messages=8, wait_time_s=1, visibility_timeout_s=0.5)
    assert (len(first), len(second)) == (8, 8)
    assert reading() == 20
    queue.delete_batch([m.receipt for m in first])
    assert reading() == 12  # the first batch done; the second in hand; 4 waiting

    # The second worker dies holding its batch: its messages count until they are done.
    time.sleep(0.6)
    assert reading() == 12
    taken_back = queue.receive(max_messages=20, wait_time_s=1, visibility_timeout_s=30)
    taken_back += queue.receive(max_messages=20, wait_time_s=1, visibility_timeout_s=30)
    assert {m.body for m in taken_back} >= {m.body for m in second}
    assert reading() == 12
    queue.delete_batch([m.receipt for m in taken_back])
    assert reading() == 0  # all done: KEDA scales the workers back to zero


def test_the_dead_letter_stream_is_not_counted(queue: Queue, redis_server: RedisServer) -> None:
    """A message moved to NAME-dlq after --max-receives is out of the backlog for good."""
    metadata = keda_trigger()
    admin = redis_server.admin()
    queue.send("poison")
    for _ in range(queue.max_receives):
        (message,) = queue.receive(max_messages=1, wait_time_s=1, visibility_timeout_s=0.1)
        queue.change_visibility(message.receipt, 0)
    assert queue.receive(max_messages=1, wait_time_s=0.5, visibility_timeout_s=1) == []
    assert keda_reading(admin, metadata, queue.name) == 0
    assert admin.xlen(queue.dead_letter_name) == 1
