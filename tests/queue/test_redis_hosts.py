"""Workers on other hosts: the web tier and two workers share only S3 and Redis.

Each worker has its own ``--data-dir``, working directory and model copy, and its
environment names only its own paths, so a worker that needed anything from the web
tier's disk would fail here. One worker is SIGKILLed while it holds a batch; the
messages it held complete on the other, and ``GET /v1/jobs/{id}`` sees every result.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlaas.jobs import messages
from dlaas.queue.redis_client import GROUP
from tests.aws.servers import (  # noqa: F401 - fixtures
    REGION,
    Endpoint,
    fixture_aws_env,
    fixture_seaweedfs,
    fixture_seaweedfs_server,
    new_bucket,
)
from tests.support import ServeProcess, children_of

from .redis_server import RedisServer, fixture_redis_server  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

IMAGES = 200
VISIBILITY_TIMEOUT_S = 5


class Host:
    """A machine of its own for one worker: its directory is all the disk it has."""

    def __init__(self, root: Path, name: str, models: Path, common: list[str]) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        shutil.copytree(models, self.dir / "models")
        self.log_path = self.dir / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLAAS_")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "dlaas", "worker", *common,
                    "--data-dir", str(self.dir / "data"), "--model-dir", str(self.dir / "models"),
                    "--worker-id", name, "--idle-timeout-s", "600",
                    "--visibility-timeout-s", str(VISIBILITY_TIMEOUT_S),
                ],
                cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def consumer(self) -> str:
        """Its name in the stream's consumer group."""
        return f"{socket.gethostname()}-{self.proc.pid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.log():
            assert self.proc.poll() is None, f"worker {self.name} exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no {needle} from {self.name}:\n{self.log()}"
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def photos(photo: Callable[[str], bytes]) -> list[bytes]:
    return [photo(n) for n in ("chelsea", "coffee", "rocket", "astronaut")]


@pytest.fixture
def hosts(
    tmp_path: Path, model_cache_dir: Path, seaweedfs: Endpoint, redis_server: RedisServer
) -> Iterator[tuple[list[str], list[Host]]]:
    bucket = new_bucket(seaweedfs)
    stream = f"jobs-{uuid.uuid4().hex[:8]}"
    common = [
        "--storage", f"s3://{bucket}/dlaas", "--s3-endpoint-url", seaweedfs.url,
        "--s3-addressing-style", "path", "--aws-region", REGION,
        "--queue", f"{redis_server.url}?stream={stream}",
    ]  # fmt: skip
    workers = [Host(tmp_path, name, model_cache_dir, common) for name in ("host-a", "host-b")]
    try:
        yield common, workers
    finally:
        for worker in workers:
            worker.stop()
        redis_server.admin().delete(stream, stream + "-dlq")  # type: ignore[attr-defined]


def test_workers_on_other_hosts_finish_a_killed_workers_batch(
    tmp_path: Path,
    model_cache_dir: Path,
    redis_server: RedisServer,
    photos: list[bytes],
    hosts: tuple[list[str], list[Host]],
) -> None:
    common, (a, b) = hosts
    stream = common[-1].partition("?stream=")[2]
    admin: Any = redis_server.admin()
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    shutil.copytree(model_cache_dir, web_dir / "models")
    web = ServeProcess(web_dir, [*common, "--workers", "0", "--model-dir", str(web_dir / "models")])
    try:
        web.wait_ready()
        assert children_of(web.proc.pid) == [], "--workers 0 runs the web tier alone"
        for worker in (a, b):
            worker.wait_for("worker_ready", timeout_s=120)

        files = [("files", (f"{i}.jpg", photos[i % len(photos)])) for i in range(IMAGES)]
        response = httpx.post(web.url + "/v1/jobs", files=files, timeout=120)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]

        # Kill host-a the moment it is seen holding messages: in the middle of a batch.
        a.wait_for("batch_done", timeout_s=120)
        held: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not held and time.monotonic() < deadline:
            held = admin.xpending_range(stream, GROUP, "-", "+", 1000, consumername=a.consumer)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        held = admin.xpending_range(stream, GROUP, "-", "+", 1000, consumername=a.consumer)
        assert held, "host-a held no messages when it was killed"
        bodies = [admin.xrange(stream, e["message_id"], e["message_id"])[0][1]["b"] for e in held]
        held_images = {messages.Task.from_json(body).image_id for body in bodies}

        deadline = time.monotonic() + 240
        status = httpx.get(f"{web.url}/v1/jobs/{job_id}", timeout=60).json()
        while status["status"] != "complete" and time.monotonic() < deadline:
            time.sleep(1)
            status = httpx.get(f"{web.url}/v1/jobs/{job_id}", timeout=60).json()
        counts = status["counts"]
        assert (counts["done"], counts["failed"]) == (IMAGES, 0), b.log()[-3000:]
        by_image = {r["image_id"]: r for r in status["results"]}
        assert len(by_image) == IMAGES
        assert {by_image[i]["worker_id"] for i in held_images} == {"host-b"}
        assert {r["worker_id"] for r in by_image.values()} == {"host-a", "host-b"}
        assert admin.xlen(stream) == 0  # every message deleted once its result was stored
    finally:
        assert b.stop() == 0, b.log()[-3000:]
        assert web.stop() == 0, web.log()
