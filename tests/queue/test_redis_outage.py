"""Redis going away mid-job: dropped connections and restarts lose no accepted image.

The queue-level tests show the mechanism (reconnect with backoff, a consumer group made
again after a restart without persistence); the end-to-end tests run ``dlaas serve``
with two workers on Redis and break Redis while a job is in the middle of its batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlaas.errors import QueueError
from dlaas.model import build_tiny_model
from dlaas.queue import open_queue
from dlaas.queue.base import Message
from tests.support import ServeProcess

from .conformance import receive_until
from .redis_server import (  # noqa: F401 - fixtures
    RedisServer,
    fixture_redis_aof,
    fixture_redis_fresh,
    fixture_redis_server,
)


def restart_later(server: RedisServer, after_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(after_s), server.start()))
    thread.start()
    return thread


# The queue alone ------------------------------------------------------------------------


def test_a_waiting_receive_survives_a_dropped_connection(redis_server: RedisServer) -> None:
    queue = open_queue(f"{redis_server.url}?stream=drop-{time.monotonic_ns()}")
    got: list[list[Message]] = []
    receiver = threading.Thread(target=lambda: got.append(queue.receive(wait_time_s=8)))
    try:
        receiver.start()
        time.sleep(0.3)
        assert redis_server.drop_clients() >= 1  # the receiver's blocking read among them
        time.sleep(0.3)
        queue.sibling(queue.name).send("after the drop")
        receiver.join(timeout=10)
        assert [m.body for m in got[0]] == ["after the drop"]
    finally:
        queue.destroy()
        queue.close()


def test_a_restart_with_aof_keeps_queued_and_in_flight_messages(redis_aof: RedisServer) -> None:
    queue = open_queue(f"{redis_aof.url}?stream=jobs")
    try:
        sent = set(queue.send_batch([f"image-{i}" for i in range(20)]))
        in_flight = receive_until(queue, 5, visibility_timeout_s=60)
        redis_aof.kill()
        restarter = restart_later(redis_aof, 1.0)
        stats = queue.stats()  # blocks, reconnecting, until the server is back
        restarter.join()
        assert (stats.visible, stats.in_flight) == (15, 5)
        queue.delete_batch([m.receipt for m in in_flight])  # receipts survive the restart
        rest = receive_until(queue, 15, max_messages=16)
        queue.delete_batch([m.receipt for m in rest])
        assert {m.id for m in in_flight + rest} == sent
        assert queue.stats().visible + queue.stats().in_flight == 0
    finally:
        queue.close()


def test_a_restart_without_persistence_makes_the_group_again(redis_fresh: RedisServer) -> None:
    """The data is gone with the server, but every process carries on without a restart."""
    queue = open_queue(f"{redis_fresh.url}?stream=jobs")
    try:
        queue.send("lost with the server")
        redis_fresh.kill()
        restarter = restart_later(redis_fresh, 0.5)
        assert queue.receive(wait_time_s=1) == []  # waits for the server, finds it empty
        restarter.join()
        queue.send("after the restart")
        assert [m.body for m in receive_until(queue, 1)] == ["after the restart"]
    finally:
        queue.close()


def test_an_outage_longer_than_the_reconnect_timeout_is_a_queue_error(
    redis_fresh: RedisServer,
) -> None:
    queue = open_queue(f"{redis_fresh.url}?stream=jobs", reconnect_timeout_s=1.0)
    try:
        redis_fresh.kill()
        started = time.monotonic()
        with pytest.raises(QueueError, match=r"cannot reach Redis at .* after 1 s"):
            queue.receive(wait_time_s=0)
        assert 1.0 <= time.monotonic() - started < 5.0
    finally:
        queue.close()


# dlaas serve on Redis ---------------------------------------------------------------------

IMAGES = 600


def job(url: str, job_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json())


def run_through_an_outage(
    server: RedisServer, tmp_path: Path, jpeg: bytes, outage: Callable[[ServeProcess], None]
) -> None:
    """Accept a job, break Redis while its batches run, and check every image completes."""
    model = build_tiny_model(tmp_path / "model")
    serve = ServeProcess(
        tmp_path / "serve",
        [
            "--queue", f"{server.url}?stream=dlaas-input", "--workers", "2",
            "--model", str(model.onnx_path), "--labels", str(tmp_path / "model" / "labels.txt"),
            "--batch-size", "4", "--visibility-timeout-s", "5",
        ],
    )  # fmt: skip
    try:
        serve.wait_ready()
        files = [("files", (f"{i}.jpg", jpeg)) for i in range(IMAGES)]
        response = httpx.post(serve.url + "/v1/jobs", files=files, timeout=120)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        assert job(serve.url, job_id)["status"] != "complete", "the outage would come too late"
        outage(serve)
        deadline = time.monotonic() + 90
        status = job(serve.url, job_id)
        while status["status"] != "complete" and time.monotonic() < deadline:
            time.sleep(0.5)
            status = job(serve.url, job_id)
        counts = status["counts"]
        assert (counts["total"], counts["done"], counts["failed"]) == (IMAGES, IMAGES, 0)
        assert "redis_reconnecting" in serve.log_path.read_text(), "the outage went unnoticed"
        # The synchronous path too: this web process's reply stream works again.
        one = httpx.post(serve.url + "/v1/classify", files={"file": ("a.jpg", jpeg)}, timeout=30)
        assert one.status_code == 200, one.text
    finally:
        assert serve.stop() == 0, serve.log()


@pytest.mark.slow
def test_serve_loses_nothing_when_connections_drop_mid_job(
    redis_fresh: RedisServer, tmp_path: Path, small_jpeg: bytes
) -> None:
    def outage(serve: ServeProcess) -> None:
        """Drop every connection, again and again, until a drop has cut a call in flight.

        redis-py checks a pooled connection when it takes it and reconnects without a word,
        so a drop that finds every connection idle (workers between calls) is harmless and
        unseen. Only a call on the wire when the drop lands breaks; a few drops 0.2 s apart
        missed every one in a CI run, so the drops go on every 50 ms until one is seen. Once
        the job is done the workers wait in a blocking read, which the next drop cuts.
        """
        drops, give_up_at = 0, time.monotonic() + 20
        while drops < 3 or "redis_reconnecting" not in serve.log_path.read_text():
            assert time.monotonic() < give_up_at, "no drop cut a call in flight in 20 s"
            assert redis_fresh.drop_clients() >= 1
            drops += 1
            time.sleep(0.05)

    run_through_an_outage(redis_fresh, tmp_path, small_jpeg, outage)


@pytest.mark.slow
def test_serve_loses_nothing_when_redis_with_aof_restarts_mid_job(
    redis_aof: RedisServer, tmp_path: Path, small_jpeg: bytes
) -> None:
    def outage(_serve: ServeProcess) -> None:
        redis_aof.kill()
        time.sleep(1.0)
        redis_aof.start()

    run_through_an_outage(redis_aof, tmp_path, small_jpeg, outage)
