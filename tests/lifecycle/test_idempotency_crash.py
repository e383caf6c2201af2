"""Idempotency-Key when the first request's process dies between storing and answering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from dlaas.jobs import layout, messages
from dlaas.queue.sqlite import SqliteQueue
from dlaas.storage.local import LocalStorage
from tests.lifecycle.processes import WebProcess

pytestmark = pytest.mark.slow


def post(url: str, images: list[bytes], key: str) -> httpx.Response:
    files = [("files", (f"img{n}.jpg", data, "image/jpeg")) for n, data in enumerate(images)]
    return httpx.post(url + "/v1/jobs", files=files, headers={"Idempotency-Key": key}, timeout=30)


@pytest.mark.parametrize(("crash", "sent_by_first"), [("before_enqueue", 0), ("before_answer", 3)])
def test_a_retry_after_a_crash_gets_the_stored_job_enqueued_once(
    tmp_path: Path, small_jpeg: bytes, photo: Any, crash: str, sent_by_first: int
) -> None:
    images = [small_jpeg, photo("coffee"), photo("chelsea")]
    queue = SqliteQueue(tmp_path / "queue.db", "dlaas-input")
    storage = LocalStorage(tmp_path / "objects")
    # given a web process that dies while handling the upload
    first = WebProcess(tmp_path, crash=crash)
    try:
        with pytest.raises(httpx.HTTPError):
            post(first.url, images, "retry-me")
        first.proc.wait(timeout=10)
        assert first.proc.returncode == 17, first.log()
    finally:
        first.kill()
    jobs = storage.list("jobs/")
    assert len(jobs) == 1  # the job was stored before the crash
    assert queue.stats().visible == sent_by_first
    # when the client retries on a fresh process
    second = WebProcess(tmp_path)
    try:
        response = post(second.url, images, "retry-me")
        assert response.status_code == 202, response.text
        body = response.json()
        # then it gets the stored job, and the queue holds each image exactly once
        assert layout.manifest_key(body["job_id"]) == jobs[0]
        assert [i["filename"] for i in body["images"]] == ["img0.jpg", "img1.jpg", "img2.jpg"]
        tasks = [messages.Task.from_json(m.body) for m in queue.receive(10, wait_time_s=0.5)]
        assert sorted(t.image_id for t in tasks) == sorted(i["image_id"] for i in body["images"])
        # and a third try enqueues nothing more
        again = post(second.url, images, "retry-me")
        assert again.json() == body
        assert queue.stats().visible == 0
        assert len(storage.list("jobs/")) == 1
    finally:
        second.stop()
        queue.close()
