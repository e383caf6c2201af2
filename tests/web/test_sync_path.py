"""The synchronous path: one-file bodies sliced fast, results inline, nothing lost on timeout."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from dlaas.jobs import layout, messages, records
from dlaas.jobs.store import JobStore, PendingJob
from dlaas.model import ModelSpec
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.storage import open_storage
from dlaas.storage.base import Storage
from dlaas.web.replies import REPLY_PREFIX, ReplyHub
from dlaas.web.uploads.multipart import single_file
from tests.service import Service

CT = "multipart/form-data; boundary=XyZ"
ONE = (
    b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\nDATA\r\n--XyZ--\r\n"
)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (ONE, CT, ("a.jpg", b"DATA")),
        (ONE, 'multipart/form-data; boundary="XyZ"', ("a.jpg", b"DATA")),
        (ONE.replace(b"--XyZ--\r\n", b"--XyZ--"), CT, ("a.jpg", b"DATA")),  # no final CRLF
        (ONE.replace(b"DATA", b"DA\r\n--XyZTA"), CT, None),  # the delimiter inside: bad body
        (b"preamble\r\n" + ONE, CT, None),
        (ONE.replace(b'name="file"', b'name="other"'), CT, None),
        (ONE.replace(b'; filename="a.jpg"', b""), CT, None),  # a field, not a file
        (ONE.replace(b'filename="a.jpg"', b"filename*=UTF-8''a.jpg"), CT, None),
        (ONE.replace(b"--XyZ--\r\n", b"--XyZ\r\n") + ONE[7:], CT, None),  # a second part
        (ONE + b"trailing", CT, None),
        (ONE.replace(b"Content-Type", b"X-Odd"), CT, None),
        (ONE, "multipart/form-data", None),  # no boundary
        (ONE[:40], CT, None),  # truncated headers
        (ONE[:-12], CT, None),  # no closing delimiter
    ],
)
def test_single_file_takes_only_the_simple_shape(
    body: bytes, content_type: str, expected: tuple[str, bytes] | None
) -> None:
    assert single_file(body, content_type, "file") == expected


def test_classify_answers_from_the_reply_and_stores_no_result(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    svc = Service(tiny_spec)
    try:
        with TestClient(svc.app) as client:
            response = client.post("/v1/classify", files={"file": ("a.jpg", small_jpeg)})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "done" and len(body["predictions"]) == 5
            assert body["filename"] == "a.jpg"
        assert svc.storage.list("results/") == []  # the result travelled in the reply
    finally:
        svc.close()


def test_a_sync_result_shows_each_hop_of_its_trip(tiny_spec: ModelSpec, small_jpeg: bytes) -> None:
    svc = Service(tiny_spec)
    try:
        with TestClient(svc.app) as client:
            response = client.post("/v1/classify", files={"file": ("a.jpg", small_jpeg)})
        timings = response.json()["timings_ms"]
        hops = ("web_in", "queue_wait", "worker", "reply", "web_out")
        assert all(timings[hop] >= 0 for hop in (*hops, "web_total")), timings
        # The hops follow one another: together they fill the web tier's total, no more.
        assert sum(timings[hop] for hop in hops) <= timings["web_total"] + 0.01, timings
        assert timings["worker"] >= timings["decode"] + timings["infer_batch"], timings
    finally:
        svc.close()


def test_bodies_off_the_fast_path_still_classify(tiny_spec: ModelSpec, small_jpeg: bytes) -> None:
    svc = Service(tiny_spec)
    try:
        with TestClient(svc.app) as client:
            extra_field = client.post(
                "/v1/classify", data={"note": "hi"}, files={"file": ("a.jpg", small_jpeg)}
            )
            assert extra_field.status_code == 200, extra_field.text
            two = client.post(
                "/v1/classify", files=[("file", ("a.jpg", small_jpeg)), ("file", ("b.jpg", b"x"))]
            )
            assert two.status_code == 400 and two.json()["error"] == "bad_multipart"
            broken = client.post(
                "/v1/classify", content=b"--XyZ\r\nnonsense", headers={"content-type": CT}
            )
            assert broken.status_code == 400, broken.text
    finally:
        svc.close()


def test_a_result_that_comes_after_the_timeout_is_stored_for_polling(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    svc = Service(tiny_spec, with_worker=False)
    try:
        with TestClient(svc.app) as client:
            response = client.post(
                "/v1/classify?timeout_s=0.2", files={"file": ("a.jpg", small_jpeg)}
            )
            assert response.status_code == 202
            job_id = response.json()["job_id"]
            svc.thread.start()  # the worker comes late; its reply finds nobody waiting
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["counts"]["done"] == 1:
                    break
                time.sleep(0.05)
            assert job["counts"]["done"] == 1, job
            assert job["results"][0]["predictions"]
    finally:
        svc.close()


def test_one_image_waits_under_its_job_key_and_a_purge_removes_it(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    """A call of one image stores it as ``inputs/<job>`` (no folder per job on a local
    disk); the task names that key, and cancelling with purge leaves nothing behind."""
    svc = Service(tiny_spec, with_worker=False)
    try:
        with TestClient(svc.app) as client:
            response = client.post(
                "/v1/classify?timeout_s=0.1", files={"file": ("a.jpg", small_jpeg)}
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            key = layout.input_key(job_id, "", one_image=True)
            assert svc.storage.list(layout.INPUTS) == [key]
            (message,) = svc.queue.receive(max_messages=10, wait_time_s=1)
            task = messages.Task.from_json(message.body)
            assert task.key == task.input_key == key and svc.storage.get(key) == small_jpeg
            gone = client.delete(f"/v1/jobs/{job_id}?purge=true")
            assert gone.status_code == 200, gone.text
            assert svc.storage.list(layout.INPUTS) == []
    finally:
        svc.close()


@pytest.mark.parametrize("timeout", ["0", "-1", "3600.5", "nan", "inf", "soon"])
def test_a_timeout_out_of_range_is_refused_before_the_upload_is_read(
    tiny_spec: ModelSpec, small_jpeg: bytes, timeout: str
) -> None:
    svc = Service(tiny_spec, with_worker=False)
    try:
        with TestClient(svc.app) as client:
            response = client.post(
                f"/v1/classify?timeout_s={timeout}", files={"file": ("a.jpg", small_jpeg)}
            )
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "bad_request"
        assert "timeout_s" in response.json()["detail"]
        assert svc.queue.stats().visible == 0
    finally:
        svc.close()


def test_a_one_image_job_takes_no_second_image() -> None:
    jobs = JobStore(open_storage("memory://"), open_queue("memory://"))
    job = PendingJob(one_image=True)
    entry: records.ImageEntry = {
        "image_id": "a", "filename": "a", "format": "JPEG", "width": 1, "height": 1,
        "size_bytes": 1,
    }  # fmt: skip
    jobs.add(job, entry, b"1")
    with pytest.raises(ValueError, match="one image"):
        jobs.add(job, {**entry, "image_id": "b"}, b"2")
    assert jobs.storage.list("inputs/") == [layout.input_key(job.job_id, "a", one_image=True)]


def strand_a_result(queue: Queue, storage: Storage, dead: str) -> messages.Finished:
    """A reply carrying its result, left in the reply queue ``dead`` of a web process
    that died: its heartbeat record is long stale, so any other web process adopts it."""
    record = records.result_record(
        job_id="j" * 32, image_id="i" * 32, status="done", model="m", worker_id="w"
    )
    reply = messages.Finished(record, stored=False)
    queue.sibling(dead).send(messages.reply_to_json(reply))
    storage.put_json(layout.reply_queue_key(dead), {"queue": dead, "updated_at": 0.0})
    return reply


def test_results_left_in_a_dead_web_process_queue_are_stored() -> None:
    name = uuid.uuid4().hex[:8]
    storage = open_storage(f"memory://{name}")
    queue = open_queue(f"memory://{name}", name="input")
    dead = REPLY_PREFIX + "dead0000"
    reply = strand_a_result(queue, storage, dead)
    hub = ReplyHub(JobStore(storage, queue))
    loop = asyncio.new_event_loop()
    try:
        hub.start(loop)
        assert storage.get_json(layout.result_key(reply.job_id, reply.image_id)) == reply.result
        assert queue.sibling(dead).stats().visible == 0
    finally:
        hub.stop()
        loop.close()
