"""Claiming an Idempotency-Key: one winner among racers, takeover of a dead claim, release."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from dlaas.jobs import layout
from dlaas.jobs.idempotency import Claim, ClaimLost, IdempotencyStore
from dlaas.jobs.records import AcceptedBody
from dlaas.jobs.store import JobStore, PendingJob
from dlaas.keys import ANONYMOUS
from dlaas.queue import open_queue
from dlaas.storage import open_storage
from dlaas.storage.base import Storage
from dlaas.web.context import WebContext
from tests.lifecycle.test_api import submit
from tests.service import Service, files

RACERS = 8
CLAIM_TIMEOUT_S = 60.0
BODY: AcceptedBody = {"job_id": "", "images": []}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> IdempotencyStore:
    name = uuid.uuid4().hex[:8]
    jobs = JobStore(open_storage(f"memory://{name}"), open_queue(f"memory://{name}", name="input"))
    return IdempotencyStore(
        jobs,
        claim_timeout_s=CLAIM_TIMEOUT_S,
        clock=clock,
    )


def race(claim: Callable[[], Claim], racers: int = RACERS) -> list[Claim]:
    start = threading.Barrier(racers)
    out: list[Claim] = []

    def racer() -> None:
        start.wait(timeout=10)
        out.append(claim())

    threads = [threading.Thread(target=racer) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def store_job(storage: Storage, job_id: str) -> None:
    storage.put_json(layout.manifest_key(job_id), {"job_id": job_id, "images": []})


def job(owner: str, job_id: str | None = None) -> PendingJob:
    return PendingJob(job_id=job_id or layout.new_job_id(), owner=owner)


def test_racing_claims_have_one_winner_and_the_rest_wait(store: IdempotencyStore) -> None:
    claims = race(lambda: store.claim("alice", "order-1"))
    assert sorted(c.outcome for c in claims) == ["in_progress"] * (RACERS - 1) + ["won"]
    assert all(c.retry_after_s > 0 for c in claims if c.outcome == "in_progress")


def test_once_the_job_is_stored_a_retry_gets_the_earlier_record(store: IdempotencyStore) -> None:
    claim = store.claim("alice", "order-1")
    job_id = layout.new_job_id()
    saved = store.save(job("alice", job_id), "order-1", claim.claim_id, files="f", body=BODY)
    # the record is saved but its job is not whole yet: still in progress
    assert store.claim("alice", "order-1").outcome == "in_progress"
    store_job(store.storage, job_id)
    again = store.claim("alice", "order-1")
    assert (again.outcome, again.record) == ("earlier", saved)
    assert store.claim("bob", "order-1").outcome == "won"  # keys are per owner


def test_a_dead_claim_is_taken_over_once_after_the_timeout(
    store: IdempotencyStore, clock: Clock
) -> None:
    dead = store.claim("alice", "order-1")  # its process dies: no save, no release
    clock.now += CLAIM_TIMEOUT_S - 1
    assert store.claim("alice", "order-1").outcome == "in_progress"
    clock.now += 2
    claims = race(lambda: store.claim("alice", "order-1"))
    winners = [c for c in claims if c.outcome == "won"]
    assert len(winners) == 1, claims
    # the slow first request, if it was alive after all, cannot store a second job
    with pytest.raises(ClaimLost):
        store.save(job("alice", "a" * 32), "order-1", dead.claim_id, files="f", body=BODY)
    store.save(job("alice", "b" * 32), "order-1", winners[0].claim_id, files="f", body=BODY)
    assert store.storage.get_json(layout.idempotency_key("alice", "order-1"))["job_id"] == "b" * 32


def test_a_stored_record_whose_job_was_never_written_is_taken_over(
    store: IdempotencyStore, clock: Clock
) -> None:
    """The first request died after saving its record and before writing its manifest."""
    claim = store.claim("alice", "k")
    store.save(job("alice", layout.new_job_id()), "k", claim.claim_id, files="f", body=BODY)
    clock.now += CLAIM_TIMEOUT_S + 1
    assert store.claim("alice", "k").outcome == "won"


def test_an_expired_record_starts_afresh(store: IdempotencyStore, clock: Clock) -> None:
    claim = store.claim("alice", "k")
    job_id = layout.new_job_id()
    store.save(job("alice", job_id), "k", claim.claim_id, files="f", body=BODY)
    store_job(store.storage, job_id)
    clock.now += store.ttl_s + 1
    assert store.claim("alice", "k").outcome == "won"


def test_release_lets_a_retry_claim_at_once(store: IdempotencyStore) -> None:
    first = store.claim("alice", "k")
    store.release("alice", "k", first.claim_id)
    assert store.claim("alice", "k").outcome == "won"
    store.release("alice", "k", first.claim_id)  # no longer ours: left alone
    assert store.claim("alice", "k").outcome == "in_progress"


# Over HTTP ---------------------------------------------------------------------------


def test_a_duplicate_while_the_first_is_in_progress_gets_409_with_retry_after(
    idle: Service, idle_client: TestClient, small_jpeg: bytes
) -> None:
    ctx: WebContext = idle.app.state.context
    held = ctx.idempotency.claim(ANONYMOUS, "order-9")  # a first request at work
    key = {"Idempotency-Key": "order-9"}
    response = idle_client.post("/v1/jobs", files=files(small_jpeg), headers=key)
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_request_in_progress"
    assert int(response.headers["Retry-After"]) >= 1
    assert idle.storage.list("inputs/") == [] and idle.queue.stats().visible == 0
    # the first request gives up (say its upload was refused): the retry goes ahead
    ctx.idempotency.release(ANONYMOUS, "order-9", held.claim_id)
    first = submit(idle_client, small_jpeg, **key)
    assert submit(idle_client, small_jpeg, **key) == first


def test_a_refused_upload_releases_its_claim(
    idle: Service, idle_client: TestClient, small_jpeg: bytes
) -> None:
    key = {"Idempotency-Key": "order-10"}
    refused = idle_client.post("/v1/jobs", files=files(b"not an image"), headers=key)
    assert refused.status_code in (400, 415, 422), refused.text
    assert idle.storage.list("idempotency/") == []
    assert submit(idle_client, small_jpeg, **key)["job_id"]
