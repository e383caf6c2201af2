"""A real ``dlaas serve``: cancel a job half done, and the ``dlaas jobs`` commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from dlaas.model import ModelSpec
from tests.conftest import jpeg_bytes
from tests.support import ServeProcess

pytestmark = pytest.mark.slow
IMAGES = 150


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, slow_spec: ModelSpec) -> Iterator[ServeProcess]:
    """One worker taking one image at a time on a slow model: a big job is half done for a while."""
    labels = slow_spec.onnx_path.parent / "labels.txt"
    proc = ServeProcess(
        tmp_path_factory.mktemp("serve"),
        [
            "--model", str(slow_spec.onnx_path), "--labels", str(labels),
            "--workers", "1", "--batch-size", "1", "--max-batch-delay-ms", "0",
        ],
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def upload(url: str, count: int) -> dict[str, Any]:
    files = [
        (
            "files",
            (f"img{n}.jpg", jpeg_bytes(Image.new("RGB", (32, 32), (n % 256, 9, 99))), "image/jpeg"),
        )
        for n in range(count)
    ]
    response = httpx.post(url + "/v1/jobs", files=files, timeout=60)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def log_events(serve: ServeProcess, event: str, job_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in serve.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"event":"{event}"' in line and job_id in line:
            lines.append(json.loads(line))
    return lines


def test_cancel_while_half_done_classifies_nothing_more(serve: ServeProcess) -> None:
    job_id = upload(serve.url, IMAGES)["job_id"]
    # given a job part-way through
    deadline = time.monotonic() + 60
    while True:
        job = httpx.get(f"{serve.url}/v1/jobs/{job_id}", timeout=10).json()
        if job["counts"]["done"] >= 5:
            break
        assert time.monotonic() < deadline, job["counts"]
        time.sleep(0.05)
    # when it is cancelled
    response = httpx.post(f"{serve.url}/v1/jobs/{job_id}/cancel", timeout=10)
    cancelled_at = time.time()
    assert response.status_code == 202, response.text
    # then it settles as cancelled with every image accounted for
    deadline = time.monotonic() + 60
    while job["status"] != "cancelled":
        assert time.monotonic() < deadline, job["counts"]
        time.sleep(0.2)
        job = httpx.get(f"{serve.url}/v1/jobs/{job_id}", timeout=10).json()
    counts = job["counts"]
    assert counts["done"] + counts["cancelled"] == IMAGES and counts["queued"] == 0
    assert 5 <= counts["done"] < IMAGES / 2, counts
    # and the worker's own log agrees: each done image logged once, the rest dropped
    time.sleep(1.0)  # let the log reach the file
    done_lines = log_events(serve, "image_done", job_id)
    dropped = log_events(serve, "image_cancelled", job_id)
    assert len(done_lines) == counts["done"]
    assert len(dropped) == counts["cancelled"]
    # No image was classified after the cancel took effect: at most the one batch in a
    # worker's hands when the cancel landed (one image: --batch-size 1) finished after it.
    late = [line for line in done_lines if _epoch(line["ts"]) > cancelled_at]
    assert len(late) <= 1, late
    print(
        f"\ncancel: {counts['done']} done (worker log: {len(done_lines)}), "
        f"{counts['cancelled']} cancelled (worker log: {len(dropped)}), "
        f"{len(late)} finished after the cancel"
    )
    # the results done before the cancel stay readable
    done = [r for r in job["results"] if r["status"] == "done"]
    assert len(done) == counts["done"] and all(r["predictions"] for r in done)
    # and the event stream ends by saying so, for a page that never sent the cancel itself
    end = end_event(serve.url, job_id)
    assert end["status"] == "cancelled" and end["cancelled"] == counts["cancelled"], end


def end_event(url: str, job_id: str) -> dict[str, Any]:
    event = ""
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "end":
                data: dict[str, Any] = json.loads(line[6:])
                return data
    raise AssertionError("the stream closed without an end event")


def _epoch(ts: str) -> float:
    """The log's ``2024-06-01T12:00:00.123Z`` as epoch seconds."""
    import calendar

    head, millis = ts.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


def dlaas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlaas", *args], capture_output=True, text=True, timeout=120
    )


def test_the_jobs_commands(serve: ServeProcess, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(3):
        Image.new("RGB", (40, 30), (n * 80, 10, 10)).save(folder / f"p{n}.jpg")
    # classify --no-wait prints the job ID and returns at once
    queued = dlaas("classify", str(folder), "--url", serve.url, "--no-wait")
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    assert len(job_id) == 32
    # classify --wait (the default) prints the labels
    waited = dlaas("classify", str(folder), "--url", serve.url, "--wait")
    assert waited.returncode == 0, waited.stderr
    assert "p0.jpg" in waited.stdout
    listed = dlaas("jobs", "list", "--url", serve.url, "--json", "--limit", "1", "--all")
    assert listed.returncode == 0, listed.stderr
    ids = [row["job_id"] for row in json.loads(listed.stdout)["jobs"]]
    assert job_id in ids and len(ids) == len(set(ids)) >= 2
    table = dlaas("jobs", "list", "--url", serve.url)
    assert job_id[:8] in table.stdout
    shown = dlaas("jobs", "show", job_id, "--url", serve.url, "--json")
    assert json.loads(shown.stdout)["job_id"] == job_id
    out = tmp_path / "results.csv"
    deadline = time.monotonic() + 60
    while "complete" not in dlaas("jobs", "show", job_id, "--url", serve.url).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert dlaas("jobs", "show", job_id, "--url", serve.url, "--output", str(out)).returncode == 0
    assert "p1.jpg" in out.read_text()
    refused = dlaas("jobs", "cancel", job_id, "--url", serve.url)  # complete: nothing to cancel
    assert refused.returncode == 2 and "job_complete" in refused.stderr
    deleted = dlaas("jobs", "delete", job_id, "--url", serve.url)
    assert deleted.returncode == 0 and f"deleted job {job_id}" in deleted.stdout
    gone = dlaas("jobs", "show", job_id, "--url", serve.url)
    assert gone.returncode == 2 and "404" in gone.stderr
    # cancel on a queued job
    big = upload(serve.url, 200)["job_id"]
    cancelled = dlaas("jobs", "cancel", big, "--url", serve.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {big}: cancell" in cancelled.stdout
