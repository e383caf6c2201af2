"""A replica SIGKILLed under load behind HAProxy: nothing accepted is lost.

Two ``dlaas serve --workers 0`` replicas and two ``dlaas worker`` processes share Redis and
SeaweedFS; HAProxy balances over the replicas and health-checks ``/readyz``. Clients send
jobs (each with its own Idempotency-Key, retried with it on any failure) and synchronous
calls; one replica is SIGKILLed once a third of the jobs are accepted. Then every accepted
job completes, no key made two jobs, and the survivor removes the dead one's reply stream.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlaas.model import ModelSpec
from tests.aws.servers import Server, fixture_seaweedfs_server  # noqa: F401 - fixture
from tests.queue.redis_server import RedisServer, fixture_redis_server  # noqa: F401 - fixture
from tests.web.replicas import Cluster, HAProxy

pytestmark = pytest.mark.slow

JOBS, IMAGES_PER_JOB, CLIENTS = 30, 2, 3
KILL_AFTER = JOBS // 3
STALE_S = 2.0  # --reply-queue-stale-s: the survivor looks every STALE_S / 3
RETRY_FOR_S = 90.0  # a dead claim is taken over after 60 s at most


@pytest.fixture
def behind_haproxy(
    tmp_path: Path,
    redis_server: RedisServer,
    seaweedfs_server: Server,
    tiny_spec: ModelSpec,
) -> Iterator[tuple[Cluster, HAProxy]]:
    cluster = Cluster(
        tmp_path,
        redis_server,
        seaweedfs_server,
        tiny_spec,
        workers=2,
        extra=("--reply-queue-stale-s", str(STALE_S)),
    )
    proxy = None
    try:
        proxy = HAProxy(tmp_path, [replica.url for replica in cluster.replicas])
        yield cluster, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        cluster.stop()


class Client:
    """What the clients saw, counted by outcome."""

    def __init__(self, url: str, headers: dict[str, str], images: list[bytes]) -> None:
        self.url, self.headers, self.images = url, headers, images
        self.seen: Counter[str] = Counter()
        self.accepted: dict[str, str] = {}  # Idempotency-Key -> job ID
        self.lock = threading.Lock()
        self.first_accepted = threading.Event()
        self.kill_now = threading.Event()

    def count(self, what: str) -> None:
        with self.lock:
            self.seen[what] += 1

    def submit(self, key: str) -> None:
        """Send one job until it is accepted, with the same key every time."""
        files = [("files", (f"{n}.jpg", self.images[n])) for n in range(IMAGES_PER_JOB)]
        headers = {**self.headers, "Idempotency-Key": key}
        deadline = time.monotonic() + RETRY_FOR_S
        while time.monotonic() < deadline:
            try:
                response = httpx.post(
                    self.url + "/v1/jobs", files=files, headers=headers, timeout=30
                )
            except httpx.TransportError:
                self.count("job: connection failed")
                time.sleep(0.2)
                continue
            self.count(f"job: {response.status_code}")
            if response.status_code == 202:
                with self.lock:
                    self.accepted[key] = response.json()["job_id"]
                    if len(self.accepted) >= KILL_AFTER:
                        self.kill_now.set()
                return
            time.sleep(float(response.headers.get("Retry-After", "0.2")))
        raise AssertionError(f"job {key} never accepted: {self.seen}")

    def classify_until(self, done: threading.Event) -> None:
        while not done.is_set():
            files = [("file", ("x.jpg", self.images[0]))]
            try:
                response = httpx.post(
                    self.url + "/v1/classify", files=files, headers=self.headers, timeout=30
                )
                self.count(f"sync: {response.status_code}")
            except httpx.TransportError:
                self.count("sync: connection failed")


def test_a_replica_killed_under_load_loses_no_accepted_job(
    behind_haproxy: tuple[Cluster, HAProxy], photo: Any
) -> None:
    cluster, proxy = behind_haproxy
    victim, survivor = cluster.replicas
    victim_queue = cluster.reply_queue_of(victim)
    client = Client(proxy.url, cluster.headers, [photo("chelsea"), photo("coffee")])
    keys = [f"job-{n}-{uuid.uuid4().hex}" for n in range(JOBS)]
    done = threading.Event()

    def submitter(mine: list[str]) -> None:
        for key in mine:
            client.submit(key)

    threads = [threading.Thread(target=submitter, args=(keys[n::CLIENTS],)) for n in range(CLIENTS)]
    sync = threading.Thread(target=client.classify_until, args=(done,))
    started = time.monotonic()
    for thread in (*threads, sync):
        thread.start()
    # when: one replica dies without warning mid-run
    assert client.kill_now.wait(timeout=120), client.seen
    victim.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    for thread in threads:
        thread.join()
    done.set()
    sync.join()

    # then: every accepted job completes, and no key made a second job
    assert sorted(client.accepted) == sorted(keys)
    pending = set(client.accepted.values())
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for job_id in sorted(pending):
            status = httpx.get(f"{proxy.url}/v1/jobs/{job_id}", headers=cluster.headers, timeout=30)
            assert status.status_code == 200, status.text
            body = status.json()
            if body["status"] == "complete":
                assert body["counts"]["done"] == IMAGES_PER_JOB, body
                pending.discard(job_id)
        time.sleep(0.5)
    completed_at = time.monotonic()
    assert not pending, f"{len(pending)} accepted jobs never completed"
    listed = httpx.get(f"{proxy.url}/v1/jobs?limit=100", headers=cluster.headers, timeout=30)
    assert len(listed.json()["jobs"]) == JOBS

    # and the survivor removed the dead replica's reply stream, with a second look later
    # for replies that workers sent it meanwhile
    removed = f'"event":"stale_reply_queue_removed","reply_queue":"{victim_queue}"'

    def removals() -> int:
        return survivor.log_path.read_text(errors="replace").count(removed)

    deadline = time.monotonic() + 12 * STALE_S + 10
    while removals() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert removals() == 2, cluster.streams()
    assert victim_queue not in cluster.streams()
    assert cluster.reply_queue_of(survivor) in cluster.streams()
    print(
        f"\nreplica killed after {killed_at - started:.1f} s; jobs accepted {len(client.accepted)}"
        f" of {JOBS}, completed {JOBS - len(pending)}, all done {completed_at - killed_at:.1f} s"
        f" after the kill; the client saw {dict(sorted(client.seen.items()))}"
    )
