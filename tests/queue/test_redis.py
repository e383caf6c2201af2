"""RedisQueue: the conformance suite on a real redis-server, plus what is special to Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dlaas.errors import ConfigError, QueueError
from dlaas.jobs import layout
from dlaas.jobs.store import JobStore
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.queue.redis import RedisQueue
from dlaas.queue.redis_client import GROUP, HORIZON_MS
from dlaas.storage import open_storage
from dlaas.web.replies import REPLY_PREFIX, ReplyHub
from tests.web.test_sync_path import strand_a_result

from .conformance import MAX_RECEIVES, QueueConformance, receive_one, receive_until
from .redis_server import RedisServer, fixture_redis_server  # noqa: F401 - fixture


def fresh_name() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


def _open(server: RedisServer, name: str | None = None, **options: Any) -> RedisQueue:
    queue = open_queue(f"{server.url}?stream={name or fresh_name()}", **options)
    assert isinstance(queue, RedisQueue)
    return queue


class TestRedisQueue(QueueConformance):
    wait_slack_s = 0.5
    stats_settle_s = 0.5  # stats are exact; the slack only covers the test's own timing

    @pytest.fixture
    def queue(self, redis_server: RedisServer) -> Iterator[Queue]:
        queue = _open(redis_server, max_receives=MAX_RECEIVES)
        yield queue
        queue.dead_letter().destroy()
        queue.destroy()
        queue.close()


# Opening ------------------------------------------------------------------------------


def test_the_url_names_the_stream_and_creates_its_group(redis_server: RedisServer) -> None:
    name = fresh_name()
    queue = open_queue(f"{redis_server.url}?stream={name}", name="dlaas-input")
    try:
        assert queue.name == name  # the URL's stream wins: KEDA's scaler names it too
        groups = redis_server.admin().xinfo_groups(name)  # type: ignore[attr-defined]
        assert [g["name"] for g in groups] == [GROUP]
        assert open_queue(queue.url).name == name
    finally:
        queue.destroy()
        queue.close()


def test_without_a_stream_the_name_argument_or_the_default_is_used(
    redis_server: RedisServer,
) -> None:
    named = open_queue(redis_server.url, name="jobs-x")
    default = open_queue(redis_server.url)
    try:
        assert (named.name, default.name) == ("jobs-x", "dlaas-input")
    finally:
        for queue in (named, default):
            queue.destroy()
            queue.close()


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("redis://127.0.0.1:1/0?strem=x", {}, r"unknown parameter\(s\) strem"),
        ("redis://127.0.0.1:1/zero", {}, "not a Redis database number"),
        ("redis://127.0.0.1:1/0?stream=a&stream=b", {}, "more than one stream"),
        ("redis://127.0.0.1:1/0?stream=bad name", {}, "queue name 'bad name' is invalid"),
        ("redis://127.0.0.1:1/0", {"poll_interval_s": 1}, "does not take option"),
        ("redis://127.0.0.1:1/0", {"max_receives": 0}, "max_receives must be a whole number"),
    ],
)
def test_bad_urls_and_options_are_config_errors(
    url: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        open_queue(url, **options)


def test_an_unreachable_server_is_a_config_error_at_start() -> None:
    from tests.support import free_port

    started = time.monotonic()
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError, match=r"cannot reach Redis at 127\.0\.0\.1:\d+/0"):
        open_queue(url, reconnect_timeout_s=0.5)
    assert time.monotonic() - started < 5


def test_without_the_redis_client_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in ("dlaas.queue.redis", "dlaas.queue.redis_client"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)  # what an import finds without it
    with pytest.raises(ConfigError, match=r"install dlaas\[redis\]"):
        open_queue("redis://127.0.0.1:6379/0")


# Semantics in Redis terms ---------------------------------------------------------------


def test_visibility_is_the_pending_idle_time(redis_server: RedisServer) -> None:
    """A message received with a 30 s timeout is pending, with idle time HORIZON - 30 s."""
    queue = _open(redis_server)
    try:
        queue.send("x")
        message = receive_one(queue, visibility_timeout_s=30)
        admin: Any = redis_server.admin()
        (entry,) = admin.xpending_range(queue.name, GROUP, "-", "+", 10)
        assert entry["times_delivered"] == 1
        assert HORIZON_MS - 30_000 <= entry["time_since_delivered"] < HORIZON_MS - 29_000
        queue.change_visibility(message.receipt, 120)  # the heartbeat: idle reset, count kept
        (entry,) = admin.xpending_range(queue.name, GROUP, "-", "+", 10)
        assert entry["times_delivered"] == 1
        assert HORIZON_MS - 120_000 <= entry["time_since_delivered"] < HORIZON_MS - 119_000
        queue.delete(message.receipt)
        assert admin.xlen(queue.name) == 0  # XACK plus XDEL: nothing is left behind
        assert admin.xpending(queue.name, GROUP)["pending"] == 0
    finally:
        queue.destroy()
        queue.close()


def test_oldest_age_comes_from_the_stream_id(redis_server: RedisServer) -> None:
    queue = _open(redis_server)
    admin: Any = redis_server.admin()
    try:
        seconds, micros = admin.time()
        sent_ms = seconds * 1000 + micros // 1000 - 90_000
        admin.xadd(queue.name, {"b": "from the past"}, id=f"{sent_ms}-0")
        stats = queue.stats()
        assert 90.0 <= stats.oldest_age_s < 92.0
        message = receive_one(queue)
        assert message.sent_at == sent_ms / 1000
        assert 90.0 <= queue.stats().oldest_age_s < 92.0  # in flight still counts
    finally:
        queue.destroy()
        queue.close()


def test_dead_letters_keep_their_id_and_send_time(redis_server: RedisServer) -> None:
    queue = _open(redis_server, max_receives=1)
    dlq = queue.dead_letter()
    try:
        message_id = queue.send("poison")
        first = receive_one(queue, visibility_timeout_s=30)
        queue.change_visibility(first.receipt, 0)
        assert queue.receive(max_messages=1, wait_time_s=0) == []
        dead = receive_one(dlq)
        assert (dead.id, dead.body, dead.sent_at) == (message_id, "poison", first.sent_at)
        # A dead-letter queue keeps its messages however often they come back.
        dlq.change_visibility(dead.receipt, 0)
        for _ in range(3):
            dlq.change_visibility(receive_one(dlq).receipt, 0)
        assert receive_one(dlq).receive_count == 5
    finally:
        dlq.destroy()
        queue.destroy()
        queue.close()


def test_a_waiting_receive_picks_up_an_expiring_message(redis_server: RedisServer) -> None:
    """No new send wakes it; the wait still returns the message once its lease ends."""
    queue = _open(redis_server)
    try:
        queue.send("comes back")
        first = receive_one(queue, visibility_timeout_s=1)
        started = time.monotonic()
        again = queue.receive(max_messages=1, wait_time_s=5, visibility_timeout_s=30)
        assert [m.id for m in again] == [first.id]
        assert time.monotonic() - started < 2.0
    finally:
        queue.destroy()
        queue.close()


def test_a_send_to_a_destroyed_stream_starts_it_again(redis_server: RedisServer) -> None:
    """As a worker's late reply to a web process that has gone: no error, no stale group."""
    queue = _open(redis_server)
    try:
        queue.send("old")
        queue.destroy()
        queue.send("late reply")
        assert [m.body for m in receive_until(queue, 2, timeout_s=2)] == ["late reply"]
    finally:
        queue.destroy()
        queue.close()


def test_stale_or_foreign_receipts(redis_server: RedisServer) -> None:
    queue = _open(redis_server)
    try:
        queue.delete("not-a-receipt")
        queue.delete_batch(["1-0:1", "garbage"])
        with pytest.raises(QueueError, match="is stale"):
            queue.change_visibility("1-0:1", 5)
    finally:
        queue.destroy()
        queue.close()


def test_each_process_is_a_consumer_and_leaves_the_group_when_closed(
    redis_server: RedisServer,
) -> None:
    """XPENDING shows which process holds a message; closing removes an empty consumer."""
    queue = _open(redis_server)
    admin: Any = redis_server.admin()
    try:
        queue.send("x")
        message = receive_one(queue)
        me = f"{socket.gethostname()}-{os.getpid()}"
        (entry,) = admin.xpending_range(queue.name, GROUP, "-", "+", 10)
        assert entry["consumer"] == me
        queue.delete(message.receipt)
    finally:
        queue.close()
    assert [c["name"] for c in admin.xinfo_consumers(queue.name, GROUP)] == []
    admin.delete(queue.name)


def test_reply_streams_of_dead_web_processes_are_cleaned_up(redis_server: RedisServer) -> None:
    """The web tier's stale cleanup on Redis: results inside are stored, the stream goes."""
    admin: Any = redis_server.admin()
    storage = open_storage(f"memory://{uuid.uuid4().hex}")
    queue = _open(redis_server)
    dead = REPLY_PREFIX + uuid.uuid4().hex[:8]
    reply = strand_a_result(queue, storage, dead)
    hub = ReplyHub(JobStore(storage, queue))
    loop = asyncio.new_event_loop()
    try:
        hub.start(loop)
        assert storage.get_json(layout.result_key(reply.job_id, reply.image_id)) == reply.result
        assert admin.exists(dead) == 0
        assert admin.exists(hub.name) == 1  # this process's own reply stream
    finally:
        hub.stop()
        loop.close()
        queue.destroy()
        queue.close()
    assert admin.exists(hub.name) == 0  # removed on a clean stop
