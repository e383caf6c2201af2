"""dlaas across AWS-style services, against real servers on 127.0.0.1.

1. ``dlaas serve`` on S3 (SeaweedFS) and SQS (moto) with local workers takes 200 images.
2. ``dlaas serve --launcher ec2`` starts moto instances as the backlog grows; those run
   nothing, so local ``dlaas worker`` processes stand in for them under their instance IDs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlaas.queue.sqs import SqsQueue
from tests.aws.servers import REGION, Endpoint, new_bucket
from tests.support import ServeProcess

pytestmark = pytest.mark.slow


def create_input_queue(endpoint: Endpoint) -> None:
    """What the CloudFormation stack creates: the input queue with its dead-letter queue."""
    SqsQueue.from_url(
        "sqs://dlaas-input", endpoint_url=endpoint.url, region=REGION, create=True, max_receives=5
    ).close()


def post_job(url: str, photos: list[bytes], n: int) -> str:
    files = [("files", (f"{i}.jpg", photos[i % len(photos)])) for i in range(n)]
    response = httpx.post(url + "/v1/jobs", files=files, timeout=120)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def job(url: str, job_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/v1/jobs/{job_id}", timeout=60).json())


@pytest.fixture
def photos(photo: Callable[[str], bytes]) -> list[bytes]:
    return [photo(n) for n in ("chelsea", "coffee", "rocket", "astronaut")]


def test_serve_on_s3_and_sqs_takes_200_images_through(
    seaweedfs: Endpoint, moto: Endpoint, tmp_path: Path, model_cache_dir: Path, photos: list[bytes]
) -> None:
    bucket = new_bucket(seaweedfs)
    create_input_queue(moto)
    server = ServeProcess(
        tmp_path / "serve",
        [
            "--storage", f"s3://{bucket}/dlaas", "--s3-endpoint-url", seaweedfs.url,
            "--s3-addressing-style", "path",
            "--queue", "sqs://dlaas-input", "--sqs-endpoint-url", moto.url,
            "--aws-region", REGION, "--model-dir", str(model_cache_dir), "--workers", "2",
        ],
    )  # fmt: skip
    try:
        server.wait_ready()
        job_id = post_job(server.url, photos, 200)
        deadline = time.monotonic() + 240
        status = job(server.url, job_id)
        while status["status"] != "complete" and time.monotonic() < deadline:
            time.sleep(1)
            status = job(server.url, job_id)
        assert status["counts"] == {"total": 200, "queued": 0, "done": 200, "failed": 0}
        assert len({r["image_id"] for r in status["results"]}) == 200
        # The synchronous path works too: the reply reaches this web process's own queue.
        cat = httpx.post(server.url + "/", files={"myfile": ("c.jpg", photos[0])}, timeout=60)
        assert cat.status_code == 200
        assert cat.text in {"tabby", "tiger cat", "Egyptian cat"}
    finally:
        assert server.stop() == 0, server.log()


class StandIns:
    """A local ``dlaas worker`` for every moto instance, named by its instance ID."""

    def __init__(self, args: list[str], log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def follow(self, instance_ids: set[str]) -> None:
        for instance_id in instance_ids - set(self.procs):
            with (self.log_dir / f"{instance_id}.log").open("wb") as log:
                self.procs[instance_id] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dlaas",
                        "worker",
                        "--worker-id",
                        instance_id,
                        *self.args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ),
                )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def stand_ins(tmp_path: Path) -> Iterator[list[StandIns]]:
    holder: list[StandIns] = []
    yield holder
    for s in holder:
        s.stop()


def live_instances(ec2: Any) -> set[str]:
    pages = ec2.describe_instances(
        Filters=[
            {"Name": "tag:dlaas:cluster", "Values": ["dlaas"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    return {i["InstanceId"] for r in pages["Reservations"] for i in r["Instances"]}


def test_ec2_launcher_follows_the_backlog(
    moto: Endpoint,
    tmp_path: Path,
    model_cache_dir: Path,
    photos: list[bytes],
    stand_ins: list[StandIns],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)  # EC2, S3 and SQS all on moto
    bucket = new_bucket(moto)
    create_input_queue(moto)
    ec2: Any = moto.client("ec2")
    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    shared = [
        "--storage", f"s3://{bucket}/dlaas", "--queue", "sqs://dlaas-input",
        "--s3-addressing-style", "path", "--aws-region", REGION,
        "--model-dir", str(model_cache_dir),
    ]  # fmt: skip
    server = ServeProcess(
        tmp_path / "serve",
        [
            *shared, "--launcher", "ec2", "--ec2-image-id", image_id,
            "--ec2-instance-type", "c7i.large", "--max-workers", "3",
            "--target-backlog-per-worker", "16", "--scale-interval-s", "0.5",
            "--downscale-delay-s", "2",
        ],
    )  # fmt: skip
    workers = StandIns([*shared, "--idle-timeout-s", "30"], tmp_path)
    stand_ins.append(workers)
    try:
        server.wait_ready()
        assert live_instances(ec2) == set()  # idle: no instance
        job_id = post_job(server.url, photos, 200)

        peak = 0
        deadline = time.monotonic() + 240
        status = job(server.url, job_id)
        while status["status"] != "complete" and time.monotonic() < deadline:
            running = live_instances(ec2)
            peak = max(peak, len(running))
            workers.follow(running)
            time.sleep(0.3)
            status = job(server.url, job_id)
        assert status["counts"]["done"] == 200, status["counts"]
        assert peak == 3  # 200 waiting / 16 per worker, capped at --max-workers

        # With the backlog gone the controller drains; stand-ins exit and instances end.
        while live_instances(ec2) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert live_instances(ec2) == set(), server.log()
        by_worker = {r["worker_id"] for r in status["results"]}
        assert by_worker <= set(workers.procs)  # every result came from a stand-in
    finally:
        assert server.stop() == 0, server.log()
