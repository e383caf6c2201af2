"""A job over a SeaweedFS prefix, on a web tier and two workers sharing Redis: the steps
the acceptance test (small counts) and ``bench/source_jobs.py`` (2,000 and 20,000
objects) share.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from dlaas.model import ModelSpec
from tests.aws.servers import Endpoint, Server, new_bucket
from tests.queue.redis_server import RedisServer
from tests.support import ServeProcess
from tests.web.replicas import Cluster


class SourceStack:
    """A source bucket (``photos/`` to read, ``out/`` to write) and a ``Cluster`` of one
    web process and ``workers`` workers allowed to use it."""

    def __init__(
        self,
        root: Path,
        redis: RedisServer,
        seaweedfs: Server,
        spec: ModelSpec,
        *,
        workers: int = 2,
        extra: Sequence[str] = (),
    ) -> None:
        self.endpoint = Endpoint(seaweedfs.url)
        self.s3: Any = self.endpoint.client("s3")
        self.bucket = new_bucket(self.endpoint, "dlaas-photos")
        self.source = f"s3://{self.bucket}/photos/"
        self.output = f"s3://{self.bucket}/out/"
        allow = ["--source-allow", f"{self.source},{self.output}", *extra]
        self.root = root
        self.cluster = Cluster(
            root, redis, seaweedfs, spec, replicas=1, workers=workers, extra=allow
        )
        self.serve_args = [
            *self.cluster.common, "--workers", "0",
            "--api-keys-file", str(self.cluster.keys_file), *allow,
        ]  # fmt: skip
        self.restarts = 0

    @property
    def web(self) -> ServeProcess:
        return self.cluster.replicas[0]

    def fill(self, images: Sequence[bytes], count: int, threads: int = 8) -> float:
        """``count`` objects under ``photos/`` (cycling through ``images``); seconds."""
        started = time.perf_counter()

        def put(n: int) -> None:
            key = f"photos/cam{n % 4}/img-{n:06d}.jpg"
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=images[n % len(images)])

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(put, range(count)))
        return time.perf_counter() - started

    def submit(self, source: str | None = None) -> httpx.Response:
        body = {"source": source or self.source, "output": self.output}
        return httpx.post(
            self.web.url + "/v1/jobs", json=body, headers=self.cluster.headers, timeout=30
        )

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.web.url}/v1/jobs/{job_id}",
            params={"results": "false"},
            headers=self.cluster.headers,
            timeout=30,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait(self, job_id: str, done: Any, timeout_s: float) -> dict[str, Any]:
        """Poll the job until ``done(job)``; the job."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                job = self.job(job_id)
                if done(job):
                    return job
            except httpx.HTTPError:
                pass  # the web process is restarting
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} not there after {timeout_s} s:\n{self.web.log()}"
                )
            time.sleep(0.2)

    def kill_and_restart_web(self) -> None:
        """SIGKILL the web process (no clean-up of any kind), then start a new one."""
        self.web.proc.kill()
        self.web.stop()  # reaps it and closes its log
        self.restarts += 1
        fresh = ServeProcess(
            self.root / f"web-restart-{self.restarts}", self.serve_args, env=self.cluster.env
        )
        self.cluster.replicas[0] = fresh
        fresh.wait_ready()

    def output_lines(self, job_id: str) -> list[dict[str, Any]]:
        body = self.s3.get_object(Bucket=self.bucket, Key=f"out/{job_id}.jsonl")["Body"].read()
        return [json.loads(line) for line in body.splitlines()]

    def classified(self, job_id: str) -> Counter[str]:
        """How many times the workers logged each image of the job as classified."""
        seen: Counter[str] = Counter()
        for log in self.root.glob("worker-*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if '"event":"image_done"' in line and job_id in line:
                    seen[json.loads(line)["image_id"]] += 1
        return seen

    def stop(self) -> None:
        self.cluster.stop()
