"""Retention: the janitor on every store, with a fake clock and with seconds-long
retention; several janitors at once; inputs removed as results land."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlaas.jobs import layout, messages
from dlaas.lifecycle.janitor import Janitor
from dlaas.model import Classifier, ModelSpec
from dlaas.queue import open_queue
from dlaas.storage import open_storage
from dlaas.storage.base import Storage
from dlaas.worker import Worker
from tests.aws.servers import (  # noqa: F401 - fixtures
    Endpoint,
    fixture_aws_env,
    fixture_moto,
    fixture_moto_server,
    new_bucket,
)
from tests.service import Service, files, wait_complete

JOB_PREFIXES = (
    "jobs/",
    "inputs/",
    "results/",
    "cancelled/",
    "webhooks/",
    "owners/",
    "idempotency/",
)


class Stack(Service):
    """The app and one worker thread on a given store."""

    def __init__(self, storage: Storage, spec: ModelSpec, **overrides: Any) -> None:
        super().__init__(spec, storage=storage, worker_id="w-janitor", **overrides)

    def run_jobs(self, count: int, images: list[bytes]) -> list[str]:
        """``count`` finished jobs, one of them cancelled-and-purged, one idempotent."""
        ids = []
        with TestClient(self.app) as client:
            for n in range(count):
                headers = {"Idempotency-Key": layout.new_id()} if n == 0 else {}
                response = client.post("/v1/jobs", files=files(*images), headers=headers)
                assert response.status_code == 202, response.text
                ids.append(response.json()["job_id"])
            for job_id in ids:
                wait_complete(client, job_id)
            assert client.delete(f"/v1/jobs/{ids[-1]}?purge=true").status_code == 200
        return ids

    def close(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=10)


@pytest.fixture(params=["memory", "file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "memory":
        yield open_storage(f"memory://{layout.new_id()}")
    elif request.param == "file":
        yield open_storage(f"file://{tmp_path}/objects")
    else:
        moto: Endpoint = request.getfixturevalue("moto")
        store = open_storage(f"s3://{new_bucket(moto)}/dlaas", endpoint_url=moto.url)
        yield store
        store.close()


def job_keys(storage: Storage) -> list[str]:
    return [k for prefix in JOB_PREFIXES for k in storage.list(prefix)]


def test_a_fake_clock_past_the_retention_leaves_no_job_behind(
    storage: Storage, tiny_spec: ModelSpec, small_jpeg: bytes, photo: Any
) -> None:
    stack = Stack(storage, tiny_spec)
    try:
        ids = stack.run_jobs(3, [small_jpeg, photo("coffee")])
    finally:
        stack.close()
    assert job_keys(storage)  # manifests, results, the tombstone, the idempotency record
    retention_s = 168 * 3600.0
    # a sweep now removes nothing: every job is younger than the retention
    assert sum(Janitor(storage, retention_s=retention_s).sweep().values()) == 0
    kept = job_keys(storage)
    assert {layout.manifest_key(i) for i in ids[:-1]} <= set(kept)
    # a sweep a week and a minute later removes every job object
    later = time.time() + retention_s + 60
    removed = Janitor(storage, retention_s=retention_s, clock=lambda: later).sweep()
    assert removed["jobs"] == 2 and removed["results"] == 4, removed
    assert job_keys(storage) == []
    # what is left is the stopped worker's record only until it too is older than retention
    assert [k for k in storage.list() if not k.startswith(("workers/", "replies/"))] == []


def test_seconds_of_retention_leave_no_object_older_than_that(
    tmp_path: Path, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    root = tmp_path / "objects"
    storage = open_storage(f"file://{root}")
    retention_s = 5.0
    stack = Stack(storage, tiny_spec)
    try:
        old = stack.run_jobs(2, [small_jpeg, small_jpeg])
        time.sleep(retention_s + 0.5)
        new = stack.run_jobs(2, [small_jpeg])
    finally:
        stack.close()
    janitor = Janitor(storage, retention_s=retention_s)
    janitor.sweep()
    now = time.time()
    ages = {
        str(path.relative_to(root)): now - path.stat().st_mtime
        for path in root.rglob("*")
        if path.is_file()
    }
    assert ages, "the new jobs are still there"
    assert max(ages.values()) < retention_s, {k: round(v, 1) for k, v in ages.items()}
    assert not any(job_id in key for job_id in old for key in ages)
    assert f"jobs/{new[0]}.json" in ages


def test_several_janitors_at_once_while_jobs_arrive(tmp_path: Path, small_jpeg: bytes) -> None:
    root = tmp_path / "objects"
    storage = open_storage(f"file://{root}")
    # given 200 jobs made two seconds ago (IDs carry their time), 50 images each
    old_ids = []
    for _ in range(200):
        job_id = layout.new_job_id()
        old_ids.append(job_id)
        storage.put_json(layout.manifest_key(job_id), {"job_id": job_id, "images": []})
        for n in range(50):
            storage.put(layout.input_key(job_id, f"{n:032x}"), small_jpeg)
            storage.put_json(layout.result_key(job_id, f"{n:032x}"), {"status": "done"})
    time.sleep(2.2)
    # when four processes sweep with a 2 s retention while new jobs are written
    script = (
        "import sys; from dlaas.storage import open_storage; from dlaas.lifecycle.janitor import "
        "Janitor; Janitor(open_storage(sys.argv[1]), retention_s=2.0).sweep()"
    )
    env = {**os.environ}
    sweepers = [
        subprocess.Popen([sys.executable, "-c", script, f"file://{root}"], env=env)
        for _ in range(4)
    ]
    new_ids = []
    while any(p.poll() is None for p in sweepers):
        job_id = layout.new_job_id()
        new_ids.append(job_id)
        storage.put(layout.input_key(job_id, "0" * 32), small_jpeg)
        storage.put_json(layout.manifest_key(job_id), {"job_id": job_id, "images": []})
    # then every sweep succeeds, nothing old is left and nothing new is lost
    assert [p.wait(timeout=60) for p in sweepers] == [0, 0, 0, 0]
    assert not any(job_id in key for job_id in old_ids for key in storage.list())
    assert new_ids
    for job_id in new_ids:
        assert storage.exists(layout.manifest_key(job_id))
        assert storage.exists(layout.input_key(job_id, "0" * 32))
    assert [p.name for p in root.iterdir()] != []  # the store itself is intact


@pytest.mark.parametrize("keep_inputs", [False, True])
def test_inputs_go_as_results_land_unless_kept(
    tiny_spec: ModelSpec, small_jpeg: bytes, photo: Any, keep_inputs: bool
) -> None:
    storage = open_storage(f"memory://{layout.new_id()}")
    stack = Stack(storage, tiny_spec, keep_inputs=keep_inputs)
    try:
        with TestClient(stack.app) as client:
            job = client.post("/v1/jobs", files=files(small_jpeg, photo("coffee"))).json()
            wait_complete(client, job["job_id"])
            deadline = time.monotonic() + 10
            while storage.list(f"inputs/{job['job_id']}/") and not keep_inputs:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            status = client.get(f"/v1/jobs/{job['job_id']}").json()
    finally:
        stack.close()
    inputs = storage.list(f"inputs/{job['job_id']}/")
    assert len(inputs) == (2 if keep_inputs else 0)
    # the results still name the files
    assert status["counts"]["done"] == 2
    assert sorted(r["filename"] for r in status["results"]) == ["img0.jpg", "img1.jpg"]


def test_a_repeat_delivery_after_the_input_went_keeps_the_result(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    storage = open_storage(f"memory://{layout.new_id()}")
    queue = open_queue(f"memory://{layout.new_id()}", name="input")
    worker = Worker(storage=storage, queue=queue, classifier=Classifier(tiny_spec), worker_id="w")
    job_id, image_id = layout.new_job_id(), layout.new_id()
    storage.put(layout.input_key(job_id, image_id), small_jpeg)
    body = messages.Task(job_id, image_id, layout.input_key(job_id, image_id)).to_json()
    queue.send_batch([body, body])  # the same task twice, as at-least-once delivery may
    worker.process(queue.receive(1, wait_time_s=1))
    first = storage.get_json(layout.result_key(job_id, image_id))
    assert first["status"] == "done"
    assert not storage.exists(layout.input_key(job_id, image_id))
    worker.process(queue.receive(1, wait_time_s=1))
    assert storage.get_json(layout.result_key(job_id, image_id)) == first
    assert queue.stats().visible == queue.stats().in_flight == 0


def test_a_one_image_input_under_its_job_key_is_swept_with_its_job() -> None:
    """A synchronous call's image sits at ``inputs/<job>`` (no folder): the retention
    sweep finds its job from the key all the same."""
    storage = open_storage(f"memory://{layout.new_id()}")
    job_id = layout.new_job_id()
    storage.put(layout.input_key(job_id, "x", one_image=True), b"jpeg")
    janitor = Janitor(storage, retention_s=60.0, clock=lambda: time.time() + 120)
    assert janitor.sweep()["inputs"] == 1
    assert storage.list("inputs/") == []
