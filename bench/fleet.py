"""Following a job through a live ``dlaas serve``: its results, its fleet, its boot times.

The helpers behind bench/elastic.py. Results come from each job's SSE stream
(``GET /v1/jobs/{id}/events``): the service pushes them, so the bench learns of each
result as soon as a client could, without polling that would take CPU from the service.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from common import ROOT  # noqa: F401  (puts src/ on sys.path)
from dlaas.scaling.simulate import ModeReport

ZERO_TIMEOUT_S = 180.0  # longest wait for the fleet to drain after the last result


@dataclass
class Run:
    """What one fleet did on one job, before it is boiled down to a ModeReport."""

    mode: str
    images: int
    t0: float  # epoch seconds of the first POST
    completed_at: list[float] = field(default_factory=list)
    failed: int = 0
    points: dict[float, dict[str, Any]] = field(default_factory=dict)  # controller history
    zero_at: float | None = None
    boot_s: list[float] = field(default_factory=list)
    first_result_s: float | None = None  # first 202 -> first result on the SSE stream
    first_stored_s: float | None = None  # first 202 -> first result stored by a worker

    @property
    def last_result(self) -> float:
        return max(self.completed_at) if self.completed_at else self.t0

    def timeline(self) -> list[dict[str, Any]]:
        return [self.points[t] for t in sorted(self.points)]

    def report(self) -> ModeReport:
        end = self.zero_at if self.zero_at is not None else self.last_result
        live = [(p["time"], _live(p)) for p in self.timeline()]
        return ModeReport(
            mode=self.mode,
            images=self.images,
            results=len(self.completed_at),
            wall_s=self.last_result - self.t0,
            worker_s=_integrate(live, self.t0, end),
            peak_workers=max((n for t, n in live if self.t0 <= t <= end), default=0),
            to_zero_s=None if self.zero_at is None else self.zero_at - self.last_result,
            timeline=[
                {**p, "time": p["time"] - self.t0}
                for p in self.timeline()
                if self.t0 - 2 <= p["time"] <= end + 2
            ],
        )


def _live(point: dict[str, Any]) -> int:
    return int(point["running"]) + int(point["starting"]) + int(point["draining"])


def _integrate(steps: list[tuple[float, int]], start: float, end: float) -> float:
    """Integral of a step function given as (time, value) points, over [start, end]."""
    total = 0.0
    for (t, n), (t_next, _) in zip(steps, [*steps[1:], (end, 0)], strict=True):
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            total += n * (hi - lo)
    return total


class StatsSampler:
    """Polls ``GET /v1/stats`` and keeps every controller history point it sees."""

    def __init__(self, client: httpx.Client, run: Run, poll_s: float) -> None:
        self.client, self.run, self.poll_s = client, run, poll_s
        self.last: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> StatsSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.client.get("/v1/stats").json()
        for point in stats.get("history", []):
            self.run.points[float(point["time"])] = point
        self.last = stats
        return stats

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            with contextlib.suppress(httpx.HTTPError):  # a slow tick; the next one catches up
                self.sample()


def wait_idle(client: httpx.Client, mode: str, data_dir: Path, timeout_s: float = 120) -> None:
    """Fixed: the one worker is up and idle. Elastic: no worker at all."""
    from dlaas.storage import open_storage

    storage = open_storage(f"file://{(data_dir / 'objects').resolve()}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = client.get("/v1/stats").json()["workers"]
        if mode == "elastic" and workers["running"] + workers["starting"] == 0:
            return
        if mode == "fixed" and workers["running"] == 1:
            states = [storage.get_json(key).get("state") for key in storage.list("workers/")]
            if "idle" in states:  # the model is loaded, not merely the process started
                return
        time.sleep(0.2)
    raise TimeoutError(f"the {mode} service did not become idle in {timeout_s:.0f} s")


def post_jobs(
    client: httpx.Client,
    images: list[bytes],
    per_request: int,
    on_accepted: Callable[[str, float], None] = lambda job_id, at: None,
) -> list[str]:
    """Post the images, ``per_request`` a job; ``on_accepted(job_id, time)`` on each 202."""
    job_ids = []
    for start in range(0, len(images), per_request):
        chunk = images[start : start + per_request]
        files = [
            ("files", (f"{start + i}.jpg", data, "image/jpeg")) for i, data in enumerate(chunk)
        ]
        response = client.post("/v1/jobs", files=files)
        if response.status_code != 202:
            raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text}")
        job_ids.append(response.json()["job_id"])
        on_accepted(job_ids[-1], time.time())
    return job_ids


class JobFollower:
    """Reads each job's SSE stream in a thread of its own; keeps when each result arrived.

    ``first_result_s`` is what a user waits for: from the 202 that accepted the job to
    the first result on the stream.
    """

    def __init__(self, base_url: str, run: Run) -> None:
        self.base_url, self.run = base_url, run
        self.arrived_at: list[float] = []
        self.accepted_at: float | None = None
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def follow(self, job_id: str, accepted_at: float) -> None:
        if self.accepted_at is None:
            self.accepted_at = accepted_at
        thread = threading.Thread(target=self._read, args=(job_id,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            raise TimeoutError(f"jobs not finished after {timeout_s:.0f} s")
        if self.errors:
            raise RuntimeError("; ".join(self.errors))

    @property
    def first_result_s(self) -> float | None:
        if not self.arrived_at or self.accepted_at is None:
            return None
        return min(self.arrived_at) - self.accepted_at

    @property
    def first_stored_s(self) -> float | None:
        """From the 202 to the first result's ``completed_at`` (when the worker stored it)."""
        if not self.run.completed_at or self.accepted_at is None:
            return None
        return min(self.run.completed_at) - self.accepted_at

    def _read(self, job_id: str) -> None:
        seen: set[str] = set()
        total, event = -1, ""
        try:
            with (
                httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(30, read=300)) as c,
                c.stream("GET", f"/v1/jobs/{job_id}/events") as response,
            ):
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if event == "job":
                            total = int(data["total"])
                        elif event == "result":
                            self._result(job_id, data, seen)
                        elif event == "end":
                            break
        except (httpx.HTTPError, ValueError) as exc:
            self.errors.append(f"job {job_id}: {exc}")
            return
        if len(seen) != total:
            self.errors.append(f"job {job_id}: {len(seen)} results for {total}")

    def _result(self, job_id: str, data: dict[str, Any], seen: set[str]) -> None:
        now = time.time()
        if data["image_id"] in seen:
            self.errors.append(f"job {job_id}: image {data['image_id']} twice")
            return
        seen.add(data["image_id"])
        with self._lock:
            self.arrived_at.append(now)
            if data.get("completed_at"):
                self.run.completed_at.append(float(data["completed_at"]))
            if data.get("status") == "failed":
                self.run.failed += 1


def boot_times(log_text: str) -> list[float]:
    """Seconds from ``worker_launched`` to ``worker_ready``, per worker, from the JSON log."""
    launched: dict[str, float] = {}
    ready: dict[str, float] = {}
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event, worker_id = entry.get("event"), entry.get("worker_id")
        if event in ("worker_launched", "worker_ready") and worker_id:
            at = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
            (launched if event == "worker_launched" else ready)[worker_id] = at
    return [ready[w] - launched[w] for w in launched if w in ready]


def wait_zero(sampler: StatsSampler, run: Run) -> float | None:
    """The time of the first controller point after the last result with no worker left."""
    deadline = time.monotonic() + ZERO_TIMEOUT_S
    while time.monotonic() < deadline:
        for point in run.timeline():
            if point["time"] >= run.last_result and _live(point) == 0:
                return float(point["time"])
        time.sleep(sampler.poll_s)
    return None
