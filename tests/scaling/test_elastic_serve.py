"""Elastic ``dlaas serve`` with real workers: up to max with the backlog, back to zero after.

This is the scaling subsystem end to end: the policy, the controller, the local launcher
and real ``dlaas worker`` processes running the real model.
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServeProcess

pytestmark = pytest.mark.slow
MAX_WORKERS = 2


@pytest.fixture
def elastic(tmp_path: Path, model_cache_dir: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(
        tmp_path / "serve",
        [
            "--model-dir", str(model_cache_dir), "--max-workers", str(MAX_WORKERS),
            "--target-backlog-per-worker", "16", "--scale-interval-s", "0.5",
            "--downscale-delay-s", "2", "--idle-timeout-s", "6",
        ],
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def log_events(path: Path, event: str) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            out.append(record)
    return out


def epoch(ts: str) -> float:
    """'2026-11-25T05:29:14.412Z' -> epoch seconds."""
    whole, millis = ts.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


def test_200_images_scale_up_to_max_complete_and_drain_to_zero(
    elastic: ServeProcess, photo: Callable[[str], bytes]
) -> None:
    with httpx.Client(base_url=elastic.url, timeout=60) as client:
        idle = client.get("/v1/stats").json()
        assert idle["mode"] == "elastic"
        assert idle["workers"]["running"] + idle["workers"]["starting"] == 0  # from idle

        photos = [photo(n) for n in ("chelsea", "coffee", "rocket", "astronaut")]
        files = [("files", (f"{i}.jpg", photos[i % 4])) for i in range(200)]
        job_id = client.post("/v1/jobs", files=files).json()["job_id"]

        peak = 0
        deadline = time.monotonic() + 180
        job = client.get(f"/v1/jobs/{job_id}").json()
        while job["status"] != "complete" and time.monotonic() < deadline:
            workers = client.get("/v1/stats").json()["workers"]
            peak = max(peak, workers["running"])
            time.sleep(0.2)
            job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "complete", job["counts"]

        # Then back to zero: the controller drains after the downscale delay.
        back_to_zero = None
        while time.monotonic() < deadline:
            workers = client.get("/v1/stats").json()["workers"]
            if workers["running"] + workers["starting"] + workers["draining"] == 0:
                back_to_zero = time.monotonic()
                break
            time.sleep(0.2)
        assert back_to_zero is not None, "workers never went back to 0"

    assert peak == MAX_WORKERS
    results = job["results"]
    assert len(results) == 200
    assert len({r["image_id"] for r in results}) == 200
    assert all(r["status"] == "done" for r in results)

    # No worker took a message after it was asked to drain.
    drains = {
        str(e["worker_id"]): epoch(str(e["ts"]))
        for e in log_events(elastic.log_path, "worker_drain")
    }
    for result in results:
        drained_at = drains.get(result["worker_id"])
        if drained_at is not None:
            assert result["received_at"] <= drained_at + 0.001, result["worker_id"]
    exits = log_events(elastic.log_path, "worker_exit")
    assert len(exits) >= MAX_WORKERS
    assert not log_events(elastic.log_path, "worker_crashed")
