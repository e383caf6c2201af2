"""Several web replicas on one Redis and one SeaweedFS bucket, behind a load balancer.

``Cluster`` starts N ``dlaas serve --workers 0`` processes (and, on request, ``dlaas worker``
processes) on 127.0.0.1 with API keys on and the tiny model, each in a directory of its
own, sharing only the bucket and the stream; ``stop`` ends them all and drops the streams.
``HAProxy`` (Debian's ``haproxy``) balances over them, health-checking ``/readyz``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from dlaas.keys import add_key
from dlaas.model import ModelSpec
from tests.aws.servers import REGION, Endpoint, Server, new_bucket
from tests.conftest import need
from tests.queue.redis_server import RedisServer
from tests.support import ServeProcess, free_port

OWNER = "alice"


def aws_env() -> dict[str, str]:
    """The process environment without DLAAS_* or the developer's AWS set-up, plus dummy
    credentials (what ``tests.aws.servers.fixture_aws_env`` gives a test's own process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLAAS_", "AWS_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


class Cluster:
    def __init__(
        self,
        root: Path,
        redis_server: RedisServer,
        seaweedfs: Server,
        tiny_spec: ModelSpec,
        *,
        replicas: int = 2,
        workers: int = 0,
        extra: Sequence[str] = (),
    ) -> None:
        self.redis = redis_server
        self.stream = f"jobs-{uuid.uuid4().hex[:8]}"
        self.bucket = new_bucket(Endpoint(seaweedfs.url))
        self.keys_file = root / "keys"
        self.key = add_key(self.keys_file, OWNER)
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.env = aws_env()
        self.common = [
            "--storage", f"s3://{self.bucket}/dlaas", "--s3-endpoint-url", seaweedfs.url,
            "--s3-addressing-style", "path", "--aws-region", REGION,
            "--queue", f"{redis_server.url}?stream={self.stream}",
            "--model", str(tiny_spec.onnx_path),
            "--labels", str(tiny_spec.onnx_path.parent / "labels.txt"),
        ]  # fmt: skip
        serve_args = [*self.common, "--workers", "0", "--api-keys-file", str(self.keys_file)]
        self.replicas: list[ServeProcess] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        try:
            for n in range(replicas):
                self.replicas.append(
                    ServeProcess(root / f"replica-{n}", [*serve_args, *extra], env=self.env)
                )
            for n in range(workers):
                self._start_worker(root, n)
            for replica in self.replicas:
                replica.wait_ready()
        except BaseException:
            self.stop()  # what did start must not outlive the test
            raise

    def _start_worker(self, root: Path, n: int) -> None:
        argv = [
            sys.executable, "-m", "dlaas", "worker", *self.common,
            "--data-dir", str(root / f"worker-{n}"), "--worker-id", f"w{n}",
            "--idle-timeout-s", "600",
        ]  # fmt: skip
        with (root / f"worker-{n}.log").open("wb") as log:
            self.workers.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            )

    def reply_queue_of(self, replica: ServeProcess) -> str:
        """The reply stream a replica logged at start."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in replica.log_path.read_text(errors="replace").splitlines():
                if '"reply_hub_started"' in line:
                    return str(json.loads(line)["reply_queue"])
            time.sleep(0.1)
        raise AssertionError(f"no reply_hub_started line:\n{replica.log()}")

    def streams(self) -> list[str]:
        admin: Any = self.redis.admin()
        return sorted(str(k) for k in admin.scan_iter(match="dlaas-replies-*"))

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            replica.stop()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        admin: Any = self.redis.admin()
        admin.delete(self.stream, self.stream + "-dlq")


def haproxy_binary() -> str:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    need(binary is not None, "HAProxy is not installed (apt-get install haproxy)")
    assert binary is not None
    return binary


class HAProxy:
    """HAProxy on 127.0.0.1 in front of ``backends``, health-checking ``/readyz``
    twice a second: a backend is out after 2 failed checks. A connection refused by a
    backend is retried on another (``option redispatch``); a request already sent is not."""

    def __init__(self, root: Path, backends: Sequence[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(
            f"  server r{n} {url.removeprefix('http://')} check" for n, url in enumerate(backends)
        )
        config = root / "haproxy.cfg"
        config.write_text(
            f"""global
  maxconn 512
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch 1
frontend dlaas
  bind 127.0.0.1:{self.port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 2 rise 2
{servers}
"""
        )
        self.log_path = root / "haproxy.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"HAProxy not ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
