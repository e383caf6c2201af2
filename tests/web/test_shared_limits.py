"""Owner limits in a real Redis: two "replicas" (two connections) enforce one limit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlaas.assemble import open_limits_from
from dlaas.errors import WebError
from dlaas.jobs.messages import Cancelled, Progress
from dlaas.settings import load_settings
from dlaas.web.security.shared_limits import SharedLimits, open_shared_limits
from dlaas.web.security.tenancy import Limits
from tests.queue.redis_server import RedisServer, fixture_redis_server  # noqa: F401 - fixture
from tests.support import free_port


def replicas(url: str, n: int = 2, **limits: float | None) -> list[SharedLimits]:
    namespace = uuid.uuid4().hex[:8]
    options = {"rate_per_s": None, "burst": None, "max_backlog": None, **limits}
    return [
        open_shared_limits(url, namespace=namespace, **options)  # type: ignore[arg-type]
        for _ in range(n)
    ]


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[list[SharedLimits]]:
    made = replicas(redis_server.url, rate_per_s=5.0, burst=5, max_backlog=3)
    yield made
    for limits in made:
        limits.close()


def test_two_replicas_share_one_token_bucket(pair: list[SharedLimits]) -> None:
    a, b = (limits.rate for limits in pair)
    assert a is not None and b is not None
    waits = [(a if n % 2 else b).take("alice") for n in range(12)]
    granted = sum(1 for w in waits if w == 0)
    # the burst of 5, plus at most one token refilled while the 12 calls ran
    assert 5 <= granted <= 6, waits
    assert all(0 < w <= 1 / 5 + 0.01 for w in waits[granted:])
    assert b.take("bob") == 0  # buckets are per owner
    time.sleep(0.25)
    assert a.take("alice") == 0  # refilled at 5 a second


def test_two_replicas_share_one_backlog_count(pair: list[SharedLimits]) -> None:
    a, b = (limits.backlog for limits in pair)
    a.accepted("alice", ["i1", "i2"])
    b.accepted("alice", ["i3"])
    assert (a.waiting("alice"), b.waiting("alice"), b.waiting("bob")) == (3, 3, 0)
    with pytest.raises(WebError) as refused:
        b.check("alice", 1)
    assert (refused.value.status_code, refused.value.error) == (429, "owner_backlog_full")
    # a final reply reaching either replica releases the image; progress does not
    b.observe_reply(Progress("j", "i1"))
    assert a.waiting("alice") == 3
    b.observe_reply(Cancelled("j", "i1"))
    a.release(["i2", "never-accepted"])
    assert (a.waiting("alice"), b.waiting("alice")) == (1, 1)
    b.check("alice", 2)


def test_backlog_entries_expire_after_the_horizon(redis_server: RedisServer) -> None:
    (limits,) = replicas(redis_server.url, 1, max_backlog=2)
    try:
        limits.backlog.horizon_s = 0.3
        limits.backlog.accepted("alice", ["i1", "i2"])
        assert limits.backlog.waiting("alice") == 2
        time.sleep(0.4)
        assert limits.backlog.waiting("alice") == 0
    finally:
        limits.close()


def test_limits_fail_open_when_redis_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    (limits,) = replicas(f"redis://127.0.0.1:{free_port()}/0", 1, rate_per_s=1.0, max_backlog=1)
    try:
        assert limits.rate is not None
        assert limits.rate.take("alice") == 0.0  # after the reconnect timeout
        started = time.monotonic()
        assert [limits.rate.take("alice") for _ in range(3)] == [0.0, 0.0, 0.0]
        limits.backlog.accepted("alice", ["i1"])
        limits.backlog.check("alice", 5)
        assert time.monotonic() - started < 0.5  # Redis is not asked again for a while
        assert caplog.messages.count("owner_limits_unavailable") == 1
    finally:
        limits.close()


def test_where_the_limits_live(tmp_path: Path, redis_server: RedisServer) -> None:
    """Per process by default; in Redis with a redis:// queue or --limits-url."""
    local = open_limits_from(load_settings(data_dir=tmp_path, rate_limit_per_owner=2))
    assert type(local) is Limits and local.where == "process"
    for settings in (
        load_settings(data_dir=tmp_path, queue=f"{redis_server.url}?stream=s"),
        load_settings(data_dir=tmp_path, limits_url=redis_server.url),
    ):
        shared = open_limits_from(settings)
        try:
            assert isinstance(shared, SharedLimits)
            assert shared.where == f"127.0.0.1:{redis_server.port}/0"
        finally:
            shared.close()
