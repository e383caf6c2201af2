"""The lifecycle endpoints in process: list, cancel, purge, idempotent submits."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from dlaas.jobs import layout, messages
from dlaas.keys import add_key
from dlaas.model import ModelSpec
from tests.service import Service, files, wait_complete


def submit(client: TestClient, *payloads: bytes, **headers: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", files=files(*payloads), headers=headers)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def test_list_is_newest_first_and_pages_with_a_cursor(
    idle_client: TestClient, small_jpeg: bytes
) -> None:
    ids = []
    for _ in range(5):
        ids.append(submit(idle_client, small_jpeg)["job_id"])
        time.sleep(0.002)  # IDs carry milliseconds
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = idle_client.get("/v1/jobs", params=params).json()
        pages += 1
        for row in page["jobs"]:
            assert set(row) == {"job_id", "created_at", "status", "counts"}
            assert row["status"] == "running"
            assert row["counts"] == {"total": 1, "queued": 1, "done": 0, "failed": 0}
        seen += [row["job_id"] for row in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert pages == 3
    assert idle_client.get("/v1/jobs", params={"cursor": "../x"}).status_code == 400
    assert idle_client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_list_filters_by_owner(tiny_spec: ModelSpec, small_jpeg: bytes, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    alice_key = add_key(keys_file, "alice@example.com")
    bob_key = add_key(keys_file, "bob")
    alice, bob = {"X-API-Key": alice_key}, {"X-API-Key": bob_key}
    svc = Service(tiny_spec, with_worker=False, api_keys_file=keys_file)
    with TestClient(svc.app) as client:
        alice_job = submit(client, small_jpeg, **alice)["job_id"]
        bob_job = submit(client, small_jpeg, **bob)["job_id"]
        listed = client.get("/v1/jobs", headers=bob).json()["jobs"]
        assert [row["job_id"] for row in listed] == [bob_job]
        # another owner's job is not found, so it cannot be cancelled or deleted...
        assert client.post(f"/v1/jobs/{alice_job}/cancel", headers=bob).status_code == 404
        assert client.delete(f"/v1/jobs/{alice_job}?purge=true", headers=bob).status_code == 404
        # ...and its owner can
        assert client.post(f"/v1/jobs/{alice_job}/cancel", headers=alice).status_code == 202
        # the same Idempotency-Key of two owners names two jobs
        key = {"Idempotency-Key": "shared"}
        one = submit(client, small_jpeg, **alice, **key)["job_id"]
        two = submit(client, small_jpeg, **bob, **key)["job_id"]
        assert one != two
    svc.close()


def test_cancel_keeps_done_results_and_counts_the_rest(
    idle: Service, idle_client: TestClient, small_jpeg: bytes, photo: Any
) -> None:
    first = submit(idle_client, small_jpeg, photo("chelsea"))
    second = submit(idle_client, small_jpeg, photo("astronaut"), photo("coffee"))
    # given a worker that finishes the first job only
    batch = idle.queue.receive(max_messages=2, wait_time_s=1)
    assert {messages.Task.from_json(m.body).job_id for m in batch} == {first["job_id"]}
    idle.worker.process(batch)
    # when the second job is cancelled before any of it ran
    response = idle_client.post(f"/v1/jobs/{second['job_id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelling"
    assert response.json()["counts"]["cancelled"] == 0
    # then the worker drops its messages without classifying them
    batch = idle.queue.receive(max_messages=8, wait_time_s=1)
    assert len(batch) == 3
    idle.worker.process(batch)
    assert idle.queue.stats().visible == 0 and idle.queue.stats().in_flight == 0
    job = idle_client.get(f"/v1/jobs/{second['job_id']}").json()
    assert job["status"] == "cancelled"
    assert job["counts"] == {"total": 3, "queued": 0, "done": 0, "failed": 0, "cancelled": 3}
    assert {r["status"] for r in job["results"]} == {"cancelled"}
    # and a finished job cannot be cancelled, but stays readable
    assert idle_client.post(f"/v1/jobs/{first['job_id']}/cancel").status_code == 409
    done = idle_client.get(f"/v1/jobs/{first['job_id']}").json()
    assert done["status"] == "complete" and done["counts"]["done"] == 2
    listed = {row["job_id"]: row for row in idle_client.get("/v1/jobs").json()["jobs"]}
    assert listed[second["job_id"]]["status"] == "cancelled"
    assert listed[first["job_id"]]["status"] == "complete"


def test_purge_removes_everything_and_then_404(
    live: Service, live_client: TestClient, small_jpeg: bytes
) -> None:
    service, client = live, live_client
    job = submit(client, small_jpeg, small_jpeg)
    wait_complete(client, job["job_id"])
    job_id = job["job_id"]
    assert service.storage.list(f"results/{job_id}/")
    response = client.delete(f"/v1/jobs/{job_id}?purge=true")
    assert response.status_code == 200
    assert response.json() == {"job_id": job_id, "status": "purged"}
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/events").status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}?purge=true").status_code == 404
    left = [k for k in service.storage.list() if job_id in k]
    assert left == [layout.cancel_key(job_id)]  # the tombstone, until retention
    assert job_id not in [row["job_id"] for row in client.get("/v1/jobs").json()["jobs"]]


def test_a_delete_without_purge_is_refused_and_says_how_to_cancel(
    idle_client: TestClient, small_jpeg: bytes
) -> None:
    """An old client's cancel (a bare DELETE) neither cancels nor removes anything."""
    job_id = submit(idle_client, small_jpeg)["job_id"]
    for url in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}?purge=false"):
        response = idle_client.delete(url)
        assert response.status_code == 400
        assert response.json()["error"] == "purge_required"
        assert f"POST /v1/jobs/{job_id}/cancel" in response.json()["detail"]
    job = idle_client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and "cancelled" not in job["counts"]


def test_purge_of_a_queued_job_leaves_nothing_behind(
    idle: Service, idle_client: TestClient, small_jpeg: bytes
) -> None:
    job_id = submit(idle_client, small_jpeg, small_jpeg)["job_id"]
    assert idle_client.delete(f"/v1/jobs/{job_id}?purge=true").status_code == 200
    idle.worker.process(idle.queue.receive(max_messages=8, wait_time_s=1))
    assert [k for k in idle.storage.list() if job_id in k] == [layout.cancel_key(job_id)]
    assert idle.queue.stats().visible == 0


def test_idempotent_retry_returns_the_first_answer(
    idle: Service, idle_client: TestClient, small_jpeg: bytes, photo: Any
) -> None:
    key = {"Idempotency-Key": "order-7f3a"}
    first = submit(idle_client, small_jpeg, photo("coffee"), **key)
    again = submit(idle_client, small_jpeg, photo("coffee"), **key)
    assert again == first
    assert idle.queue.stats().visible == 2  # the retry enqueued nothing
    assert len(idle.storage.list("jobs/")) == 1
    # the same key with other files is refused, naming the job it belongs to
    response = idle_client.post("/v1/jobs", files=files(small_jpeg), headers=key)
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_key_reused"
    assert response.json()["job_id"] == first["job_id"]
    assert idle.queue.stats().visible == 2
    # the refused retry left no objects behind
    assert sum(1 for k in idle.storage.list("inputs/")) == 2
    # a different key is a different job
    other = submit(idle_client, small_jpeg, photo("coffee"), **{"Idempotency-Key": "order-2"})
    assert other["job_id"] != first["job_id"]
    bad = idle_client.post("/v1/jobs", files=files(small_jpeg), headers={"Idempotency-Key": "a b"})
    assert bad.status_code == 400
