"""Jobs over a folder, in process: memory backends, a worker thread, the tiny model,
``file://`` sources and outputs under a temporary folder."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlaas.jobs import layout
from dlaas.jobs.listing import SourceJobs, first_record
from dlaas.jobs.records import ListingPage
from dlaas.model import ModelSpec
from tests.service import Service


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    (tmp_path / "allowed" / "photos").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


@pytest.fixture
def svc(tiny_spec: ModelSpec, roots: Path) -> Iterator[Service]:
    service = Service(tiny_spec, source_allow=f"file://{roots / 'allowed'}/")
    yield service
    service.close()


@pytest.fixture
def client(svc: Service) -> Iterator[TestClient]:
    with TestClient(svc.app) as client:
        yield client


def fill(folder: Path, photo: Callable[[str], bytes], n: int, bad: int = 0) -> list[str]:
    """``n`` photos (and ``bad`` files that are not images) in nested folders."""
    names = ["chelsea", "coffee", "rocket", "astronaut"]
    keys = []
    for i in range(n):
        key = f"set {i % 3}/img-{i:03d}.jpg"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(photo(names[i % len(names)]))
        keys.append(key)
    for i in range(bad):
        (folder / f"notes-{i}.txt").write_text("not an image")
        keys.append(f"notes-{i}.txt")
    return sorted(keys)


def wait_written(client: TestClient, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", params={"results": "false"}).json()
        if job["listing"] and job["listing"]["phase"] == "written":
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not write its output: {job}")


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_is_classified_where_it_is_and_written_back_in_key_order(
    client: TestClient, roots: Path, photo: Callable[[str], bytes], svc: Service
) -> None:
    folder = roots / "allowed" / "photos"
    keys = fill(folder, photo, 12, bad=2)
    source, output = f"file://{folder}/", f"file://{roots / 'allowed' / 'out'}/"
    response = client.post("/v1/jobs", json={"source": source, "output": output})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    job = wait_written(client, job_id)
    assert job["status"] == "complete"
    assert job["counts"] == {"total": 14, "queued": 0, "done": 12, "failed": 2}
    full = client.get(f"/v1/jobs/{job_id}").json()
    assert full["counts"] == job["counts"] and len(full["results"]) == 14
    lines = read_lines(roots / "allowed" / "out" / f"{job_id}.jsonl")
    assert [line["key"] for line in lines] == keys
    for line in lines:
        if line["key"].endswith(".jpg"):
            assert line["status"] == "done" and len(line["predictions"]) == 5
        else:  # not an image: fails alone, with its reason
            assert line["status"] == "failed" and line["error"]
    # The images stayed where they were; nothing of them went into dlaas's store.
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == keys
    assert svc.storage.list(layout.inputs_prefix(job_id)) == []


OK_IN, OK_OUT = "file://{root}/allowed/photos/", "file://{root}/allowed/o/"


REFUSED: list[tuple[dict[str, str], int, str]] = [
    ({"source": "file://{root}/elsewhere/", "output": OK_OUT}, 403, "source_refused"),
    ({"source": OK_IN, "output": "file://{root}/o/"}, 403, "source_refused"),
    ({"source": OK_IN + "../../elsewhere/", "output": OK_OUT}, 403, "source_refused"),
    ({"source": "file://{root}/allowed/none/", "output": OK_OUT}, 404, "source_not_found"),
    ({"source": OK_IN, "output": OK_OUT}, 422, "source_empty"),
    ({"source": OK_IN, "manifest": OK_IN + "m.txt", "output": OK_OUT}, 400, "bad_job_body"),
    ({"source": "http://169.254.169.254/latest/", "output": OK_OUT}, 403, "source_refused"),
    ({"source": "file://evil.example/x/", "output": OK_OUT}, 403, "source_refused"),
    ({"source": OK_IN, "output": OK_OUT, "endpoint": "http://x"}, 400, "bad_job_body"),
]


def test_refused_sources_get_a_4xx_and_nothing_is_read(client: TestClient, roots: Path) -> None:
    (roots / "elsewhere" / "secret.jpg").write_bytes(b"secret")
    for body, status, error in REFUSED:
        filled = {k: v.format(root=roots) for k, v in body.items()}
        response = client.post("/v1/jobs", json=filled)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"] == error and response.json()["detail"]
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_without_source_allow_the_feature_is_off_and_says_how_to_turn_it_on(
    tiny_spec: ModelSpec, roots: Path
) -> None:
    svc = Service(tiny_spec)
    try:
        with TestClient(svc.app) as client:
            body = {"source": f"file://{roots}/allowed/photos/", "output": f"file://{roots}/o/"}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 400
            assert "--source-allow" in response.json()["detail"]
    finally:
        svc.close()


def test_a_manifest_names_the_keys(
    client: TestClient, roots: Path, photo: Callable[[str], bytes]
) -> None:
    folder = roots / "allowed" / "photos"
    fill(folder, photo, 3)
    (folder / "list.txt").write_text("set 2/img-002.jpg\nset 0/img-000.jpg\n\nmissing.jpg\n")
    body = {"manifest": f"file://{folder}/list.txt", "output": f"file://{roots}/allowed/out/"}
    job_id = client.post("/v1/jobs", json=body).json()["job_id"]
    wait_written(client, job_id)
    lines = read_lines(roots / "allowed" / "out" / f"{job_id}.jsonl")
    assert [line["key"] for line in lines] == [
        "set 2/img-002.jpg",
        "set 0/img-000.jpg",
        "missing.jpg",
    ]
    assert [line["status"] for line in lines] == ["done", "done", "failed"]
    assert "no longer in the source" in lines[2]["error"]


def test_a_listing_resumes_from_its_cursor_and_enqueues_nothing_twice(
    svc: Service, roots: Path, photo: Callable[[str], bytes]
) -> None:
    """A process died after storing page 1 and before counting it; another resumes."""
    svc.close()  # no worker: count what is enqueued
    folder = roots / "allowed" / "photos"
    keys = fill(folder, photo, 7)
    runner = SourceJobs(svc.app.state.context.jobs, _opener, holder="b", lease_s=0.2)
    runner.storage.put_json(
        layout.manifest_key("a" * 32),
        {
            "job_id": "a" * 32,
            "created_at": time.time(),
            "images": [],
            "source": {"url": f"file://{folder}/", "kind": "prefix", "output": "file:///x/"},
        },
    )
    record = first_record("a" * 32, "dead", lease_s=-1)
    record.update(cursor=keys[2], pages=1, count=3)
    page: ListingPage = {"keys": keys[3:5], "cursor": keys[4]}
    runner.storage.put_json(layout.listing_key("a" * 32), record)
    runner.storage.put_json(layout.listing_page_key("a" * 32, 1), page)
    # The dead process had sent page 1 and one of its images was classified already.
    image = layout.source_image_id(keys[3])
    runner.storage.put_json(layout.result_key("a" * 32, image), {"image_id": image})

    assert runner.resume_all() == 1
    deadline = time.monotonic() + 10
    while runner.jobs.listing("a" * 32)["phase"] == "listing":  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    runner.close()
    sent = [json.loads(m.body)["key"] for m in _drain(svc)]
    assert sorted(sent) == [keys[4], keys[5], keys[6]]  # page 1's unfinished key, then the rest
    listing = runner.jobs.listing("a" * 32)
    assert listing is not None and listing["count"] == 7 and listing["generation"] == 1


def _opener(url: str, read_only: bool) -> Any:
    from dlaas.storage import open_source, open_storage

    return open_source(url) if read_only else open_storage(url)


def _drain(svc: Service) -> list[Any]:
    out = []
    while batch := svc.queue.receive(max_messages=10, wait_time_s=0, visibility_timeout_s=60):
        out.extend(batch)
    return out


def test_a_cancelled_job_writes_what_it_has_and_says_so(
    tiny_spec: ModelSpec, roots: Path, photo: Callable[[str], bytes]
) -> None:
    folder = roots / "allowed" / "photos"
    keys = fill(folder, photo, 5)
    svc = Service(tiny_spec, with_worker=False, source_allow=f"file://{roots / 'allowed'}/")
    try:
        with TestClient(svc.app) as client:
            body = {"source": f"file://{folder}/", "output": f"file://{roots}/allowed/out/"}
            job_id = client.post("/v1/jobs", json=body).json()["job_id"]
            deadline = time.monotonic() + 10
            while client.get(f"/v1/jobs/{job_id}?results=false").json()["counts"]["total"] < 5:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
            svc.thread.start()  # the worker finds every task cancelled
            job = wait_written(client, job_id)
    finally:
        svc.close()
    assert job["status"] == "cancelled"
    assert job["counts"] == {"total": 5, "queued": 0, "done": 0, "failed": 0, "cancelled": 5}
    lines = read_lines(roots / "allowed" / "out" / f"{job_id}.jsonl")
    assert [line["key"] for line in lines] == keys
    assert {line["status"] for line in lines} == {"cancelled"}
    assert all("cancelled" in line["error"] for line in lines)


def test_a_folder_that_vanishes_mid_job_fails_the_rest_not_the_service(
    tiny_spec: ModelSpec, roots: Path, photo: Callable[[str], bytes]
) -> None:
    folder = roots / "allowed" / "photos"
    fill(folder, photo, 4)
    svc = Service(tiny_spec, with_worker=False, source_allow=f"file://{roots / 'allowed'}/")
    try:
        with TestClient(svc.app) as client:
            body = {"source": f"file://{folder}/", "output": f"file://{roots}/allowed/out/"}
            first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
            job_id = first.json()["job_id"]
            again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
            assert again.status_code == 202 and again.json()["job_id"] == job_id
            other = {**body, "source": f"file://{roots / 'allowed'}/"}
            reused = client.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k1"})
            assert reused.status_code == 409
            deadline = time.monotonic() + 10
            while client.get(f"/v1/jobs/{job_id}?results=false").json()["counts"]["total"] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            shutil.rmtree(folder)
            svc.thread.start()
            job = wait_written(client, job_id)
            assert client.get("/healthz").status_code == 200
    finally:
        svc.close()
    assert job["counts"] == {"total": 4, "queued": 0, "done": 0, "failed": 4}
    lines = read_lines(roots / "allowed" / "out" / f"{job_id}.jsonl")
    assert all(line["status"] == "failed" for line in lines)
    assert all("the source" in line["error"] for line in lines)  # gone, or cannot be opened


def test_the_job_list_counts_a_source_job_without_reading_its_results(
    client: TestClient, roots: Path, photo: Callable[[str], bytes], svc: Service
) -> None:
    folder = roots / "allowed" / "photos"
    fill(folder, photo, 3)
    body = {"source": f"file://{folder}/", "output": f"file://{roots}/allowed/out/"}
    job_id = client.post("/v1/jobs", json=body).json()["job_id"]
    wait_written(client, job_id)
    svc.app.state.context.jobs._results.clear()
    [row] = client.get("/v1/jobs").json()["jobs"]
    assert row["status"] == "complete" and row["counts"]["done"] == 3
    assert not svc.app.state.context.jobs._results  # no record was read for it
