"""``dlaas worker`` as a real process: SIGKILL loses nothing, SIGTERM finishes the batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dlaas.jobs import layout, messages
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.storage import open_storage
from dlaas.storage.base import Storage

pytestmark = pytest.mark.slow


class Cluster:
    def __init__(self, root: Path, model_dir: Path) -> None:
        self.root = root
        self.model_dir = model_dir
        self.storage_url = f"file://{root / 'objects'}"
        self.queue_url = f"sqlite://{root / 'queue.db'}"
        self.storage: Storage = open_storage(self.storage_url)
        self.queue: Queue = open_queue(self.queue_url, name="dlaas-input")

    def enqueue(self, payloads: list[bytes]) -> list[messages.Task]:
        job_id = layout.new_id()
        tasks = []
        for payload in payloads:
            image_id = layout.new_id()
            key = layout.input_key(job_id, image_id)
            self.storage.put(key, payload)
            tasks.append(messages.Task(job_id=job_id, image_id=image_id, key=key))
        self.queue.send_batch([t.to_json() for t in tasks])
        return tasks

    def start_worker(self, worker_id: str, **flags: str) -> subprocess.Popen[bytes]:
        args = [
            sys.executable, "-m", "dlaas", "worker",
            "--storage", self.storage_url, "--queue", self.queue_url,
            "--model-dir", str(self.model_dir), "--worker-id", worker_id,
            "--batch-size", "16", "--visibility-timeout-s", "2",
        ]  # fmt: skip
        for name, value in flags.items():
            args += ["--" + name.replace("_", "-"), value]
        with (self.root / f"{worker_id}.log").open("wb") as log:  # the child keeps its own fd
            return subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )

    def wait_busy(self, worker_id: str, timeout_s: float = 60) -> None:
        path = self.root / "objects" / layout.worker_key(worker_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if json.loads(path.read_text())["state"] == "busy":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.002)
        raise TimeoutError(f"worker {worker_id} never became busy:\n{self.log(worker_id)}")

    def log(self, worker_id: str) -> str:
        return (self.root / f"{worker_id}.log").read_text(errors="replace")[-4000:]

    def results(self, tasks: list[messages.Task]) -> dict[str, dict[str, object]]:
        out = {}
        for t in tasks:
            key = layout.result_key(t.job_id, t.image_id)
            if self.storage.exists(key):
                out[t.image_id] = self.storage.get_json(key)
        return out


@pytest.fixture
def cluster(tmp_path: Path, model_cache_dir: Path) -> Cluster:
    return Cluster(tmp_path, model_cache_dir)


def test_sigkill_mid_batch_loses_nothing(cluster: Cluster, photo: Callable[[str], bytes]) -> None:
    tasks = cluster.enqueue([photo("chelsea"), photo("coffee")] * 24)
    a = cluster.start_worker("A", idle_timeout_s="30")
    cluster.wait_busy("A")
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    held = cluster.queue.stats().in_flight
    assert held > 0, "the killed worker held no messages; the test did not kill it mid-batch"

    b = cluster.start_worker("B", idle_timeout_s="4")
    assert b.wait(timeout=120) == 0, cluster.log("B")
    results = cluster.results(tasks)
    assert set(results) == {t.image_id for t in tasks}
    assert all(r["status"] == "done" for r in results.values())
    assert sum(1 for r in results.values() if r["worker_id"] == "B") >= held
    stats = cluster.queue.stats()
    assert (stats.visible, stats.in_flight, stats.dead_lettered) == (0, 0, 0)


def test_sigterm_finishes_the_batch_in_hand_and_exits_0(
    cluster: Cluster, photo: Callable[[str], bytes]
) -> None:
    tasks = cluster.enqueue([photo("chelsea")] * 64)
    a = cluster.start_worker("A", idle_timeout_s="30")
    cluster.wait_busy("A")
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=30) == 0, cluster.log("A")
    done = cluster.results(tasks)
    stats = cluster.queue.stats()
    assert len(done) >= 1
    assert stats.in_flight == 0  # nothing held back: unfinished messages were released
    assert len(done) + stats.visible == len(tasks)
    assert "worker_exit" in cluster.log("A")


def test_idle_worker_exits_by_itself(cluster: Cluster) -> None:
    started = time.monotonic()
    a = cluster.start_worker("A", idle_timeout_s="1")
    assert a.wait(timeout=60) == 0, cluster.log("A")
    assert time.monotonic() - started < 60
    record = cluster.storage.get_json(layout.worker_key("A"))
    assert record["state"] == "stopped"
    assert record["exit_reason"] == "idle"
