"""Two web replicas on one Redis and one SeaweedFS bucket act as one service.

- The same Idempotency-Key sent to both at the same instant makes one job, every round.
- One owner's rate limit holds across both: hammering both for 4 s gets about the bucket.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dlaas.model import ModelSpec
from tests.aws.servers import Server, fixture_seaweedfs_server  # noqa: F401 - fixture
from tests.queue.redis_server import RedisServer, fixture_redis_server  # noqa: F401 - fixture
from tests.web.replicas import Cluster

pytestmark = pytest.mark.slow

ROUNDS = 20
RATE_PER_S, BURST, HAMMER_S, THREADS = 5, 5, 4.0, 8


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server: RedisServer,
    seaweedfs_server: Server,
    tiny_spec: ModelSpec,
) -> Iterator[Cluster]:
    extra = getattr(request, "param", ())
    made = Cluster(tmp_path, redis_server, seaweedfs_server, tiny_spec, extra=extra)
    try:
        yield made
    finally:
        made.stop()


def at_once(calls: list[tuple[str, dict[str, str], bytes]]) -> list[httpx.Response]:
    """POST one job per (url, headers, image), all released at one instant."""
    start = threading.Barrier(len(calls))
    out: list[httpx.Response | BaseException] = [RuntimeError("not run")] * len(calls)

    def post(n: int) -> None:
        url, headers, image = calls[n]
        with httpx.Client(timeout=30) as client:
            start.wait(timeout=10)
            try:
                out[n] = client.post(
                    url + "/v1/jobs", files=[("files", ("a.jpg", image))], headers=headers
                )
            except httpx.HTTPError as exc:
                out[n] = exc

    threads = [threading.Thread(target=post, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in out:
        if isinstance(result, BaseException):
            raise result
    return [r for r in out if isinstance(r, httpx.Response)]


def test_one_key_sent_to_both_replicas_at_once_makes_one_job(
    cluster: Cluster, small_jpeg: bytes
) -> None:
    a, b = (replica.url for replica in cluster.replicas)
    outcomes: Counter[str] = Counter()
    for round_no in range(ROUNDS):
        headers = {**cluster.headers, "Idempotency-Key": f"round-{round_no}-{uuid.uuid4().hex}"}
        answers = at_once([(a, headers, small_jpeg), (b, headers, small_jpeg)])
        statuses = sorted(r.status_code for r in answers)
        assert statuses in ([202, 202], [202, 409]), [r.text for r in answers]
        accepted = {r.json()["job_id"] for r in answers if r.status_code == 202}
        assert len(accepted) == 1, f"round {round_no}: two jobs {accepted}"
        for refused in (r for r in answers if r.status_code == 409):
            assert refused.json()["error"] == "idempotency_request_in_progress"
            assert int(refused.headers["Retry-After"]) >= 1
            # the retry the 409 asks for gets the first answer
            retry = httpx.post(
                b + "/v1/jobs", files=[("files", ("a.jpg", small_jpeg))], headers=headers
            )
            assert (retry.status_code, retry.json()["job_id"]) == (202, accepted.pop())
        outcomes["409 then replay" if 409 in statuses else "both 202"] += 1
    listed = httpx.get(a + "/v1/jobs?limit=100", headers=cluster.headers, timeout=30).json()
    assert len(listed["jobs"]) == ROUNDS
    for replica in cluster.replicas:  # the start-up probe found If-None-Match honoured
        assert "s3_conditional_put" not in replica.log_path.read_text(errors="replace")
    print(f"\n{ROUNDS} rounds: {dict(outcomes)}; jobs listed: {len(listed['jobs'])}")


@pytest.mark.parametrize(
    "cluster",
    [("--rate-limit-per-owner", str(RATE_PER_S), "--rate-limit-burst", str(BURST))],
    indirect=True,
)
def test_one_owners_rate_limit_holds_across_both_replicas(cluster: Cluster) -> None:
    urls = [replica.url for replica in cluster.replicas]
    seen: Counter[tuple[str, int]] = Counter()
    retry_after_missing = 0
    lock = threading.Lock()
    start = threading.Barrier(THREADS)
    end_at: list[float] = []

    def hammer(n: int) -> None:
        nonlocal retry_after_missing
        with httpx.Client(headers=cluster.headers, timeout=30) as client:
            start.wait(timeout=10)
            if not end_at:
                end_at.append(time.monotonic() + HAMMER_S)
            calls = 0
            while time.monotonic() < end_at[0]:
                url = urls[(n + calls) % len(urls)]
                calls += 1
                response = client.get(url + "/v1/jobs?limit=1")
                with lock:
                    seen[(url, response.status_code)] += 1
                    if response.status_code == 429 and "Retry-After" not in response.headers:
                        retry_after_missing += 1

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = {url: seen[(url, 200)] for url in urls}
    limited = sum(seen[(url, 429)] for url in urls)
    print(f"\n{THREADS} threads for {HAMMER_S:g} s over 2 replicas: 200 {ok}, 429 {limited}")
    assert set(code for _, code in seen) <= {200, 429}, seen
    # the bucket's 5 plus 5/s for 4 s is 25; a little slack for the threads' start
    assert sum(ok.values()) <= 33, seen
    assert sum(ok.values()) >= 20, seen
    assert all(ok.values()), "both replicas answered"
    assert limited > 0 and retry_after_missing == 0
