"""The seed's elastic-vs-fixed table, reproduced on this machine.

For each job size (10, 30, 100 and 1,000 photos) and each fleet, start a fresh
``dlaas serve`` (an idle service), post the photos through ``POST /v1/jobs`` and follow
``GET /v1/jobs/{id}`` and ``GET /v1/stats`` until the last result is in and, for the
elastic fleet, until the worker count is back at 0:

- fixed:   ``dlaas serve --workers 1`` (its worker is up and idle before the job);
- elastic: ``dlaas serve --min-workers 0 --max-workers N`` (nothing runs before the job).

It prints wall time to the last result, worker-seconds, peak workers and seconds from
the last result back to 0 workers, next to the seed's minutes, and a PNG of backlog and
workers over time for the largest job. With ``--simulate-calibration`` it also fits the
simulator to these runs and prints its predictions beside the measurements.

    .venv/bin/python bench/elastic.py [--sizes 10 30 100 1000] [--repeats 3] \\
        [--plot docs/elastic-1000.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from common import cpu_count, ensure_model_dir, photo_set  # puts src/ and the repo on sys.path
from dlaas.scaling.simulate import ModeReport, SimParams, format_table, local_preset, simulate_mode

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


def post_jobs(client: httpx.Client, images: list[bytes], per_request: int) -> list[str]:
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
    return job_ids


def follow_jobs(client: httpx.Client, job_ids: list[str], run: Run, poll_s: float) -> None:
    """Poll each job until all its images have a result; keep the completion times."""
    pending = set(job_ids)
    while pending:
        time.sleep(poll_s)
        for job_id in sorted(pending):
            body = client.get(f"/v1/jobs/{job_id}").json()
            counts = body["counts"]
            if counts["done"] + counts["failed"] >= counts["total"]:
                pending.discard(job_id)
                results = body["results"]
                ids = [r["image_id"] for r in results]
                if len(ids) != len(set(ids)) or len(ids) != counts["total"]:
                    raise RuntimeError(f"job {job_id}: {len(ids)} results for {counts['total']}")
                run.completed_at += [float(r["completed_at"]) for r in results]
                run.failed += counts["failed"]


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


def run_once(mode: str, images: list[bytes], args: argparse.Namespace, model_dir: Path) -> Run:
    from tests.support import ServeProcess

    fleet = (
        ["--workers", "1"]
        if mode == "fixed"
        else ["--min-workers", "0", "--max-workers", str(args.max_workers)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = ServeProcess(
            Path(tmp),
            [
                *fleet,
                "--model-dir",
                str(model_dir),
                "--log-level",
                "info",
                *args.serve_args.split(),
            ],
        )
        try:
            server.wait_ready()
            with httpx.Client(base_url=server.url, timeout=300) as client:
                wait_idle(client, mode, Path(tmp))
                run = Run(mode, len(images), t0=time.time())
                with StatsSampler(client, run, args.poll_s) as sampler:
                    job_ids = post_jobs(client, images, args.files_per_request)
                    follow_jobs(client, job_ids, run, args.poll_s)
                    if mode == "elastic":
                        run.zero_at = wait_zero(sampler, run)
            run.boot_s = boot_times((Path(tmp) / "serve.log").read_text(errors="replace"))
        finally:
            server.stop()
    return run


def _median_run(runs: list[Run]) -> Run:
    """The run with the median wall time (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r.report().wall_s)[len(runs) // 2]


def wait_zero(sampler: StatsSampler, run: Run) -> float | None:
    """The time of the first controller point after the last result with no worker left."""
    deadline = time.monotonic() + ZERO_TIMEOUT_S
    while time.monotonic() < deadline:
        for point in run.timeline():
            if point["time"] >= run.last_result and _live(point) == 0:
                return float(point["time"])
        time.sleep(sampler.poll_s)
    return None


def calibrate(runs: dict[tuple[int, str], Run], max_workers: int) -> SimParams:
    """Simulator parameters from the measurements.

    The fixed runs give the cost per image (slope of wall time against images) and the
    per-job latency outside the workers (its intercept), fitted for relative error. Cold
    start comes from the elastic runs that needed one worker (their wall time minus the
    fixed run's), which includes what the logs' launch-to-ready time misses: the
    controller's reaction and the first, slower forward pass. Without such runs, the
    logs' boot times are used.
    """
    fixed = {n: r.report().wall_s for (n, mode), r in runs.items() if mode == "fixed"}
    params = replace(local_preset(), max_workers=max_workers, cores=cpu_count())
    if len(fixed) >= 2:
        # Least squares on relative error (weights 1/y^2): the simulator is judged by its
        # percentage error, and plain least squares lets the 1,000-image run's noise
        # swamp the intercept that decides the small jobs.
        xs, ys = list(fixed), list(fixed.values())
        w = [1 / y**2 for y in ys]
        sw, sx, sy = sum(w), _dot(w, xs), _dot(w, ys)
        sxx = _dot(w, [x * x for x in xs])
        sxy = _dot(w, [x * y for x, y in zip(xs, ys, strict=True)])
        slope = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
        params = replace(
            params,
            per_image_s=max(slope, 1e-4),
            per_batch_s=0.0,
            latency_s=max(0.0, (sy - slope * sx) / sw),
        )
    cold = [
        r.report().wall_s - fixed[n]
        for (n, mode), r in runs.items()
        if mode == "elastic" and n in fixed and r.report().peak_workers == 1
    ]
    boots = [b for r in runs.values() for b in r.boot_s]
    if cold:
        params = replace(params, boot_s=max(0.0, statistics.median(cold)))
    elif boots:
        params = replace(params, boot_s=statistics.median(boots))
    return params


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def plot(runs: dict[str, Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), sharey=False, squeeze=False)
    for ax, (mode, run) in zip(axes[0], runs.items(), strict=True):
        report = run.report()
        t = [p["time"] for p in report.timeline]
        backlog = [p["visible"] + p["in_flight"] for p in report.timeline]
        ax.step(t, backlog, where="post", label="backlog (visible + in flight)", color="tab:blue")
        ax.set_xlabel("seconds since the job was posted")
        ax.set_ylabel("messages")
        ax.set_title(f"{mode}: {report.images} images, {report.wall_s:.0f} s")
        workers = ax.twinx()
        workers.step(
            t,
            [p["running"] for p in report.timeline],
            where="post",
            label="running",
            color="tab:green",
        )
        workers.step(
            t,
            [p["starting"] for p in report.timeline],
            where="post",
            label="starting",
            color="tab:orange",
        )
        workers.step(
            t,
            [p["desired"] for p in report.timeline],
            where="post",
            label="desired",
            color="tab:gray",
            linestyle="--",
        )
        workers.set_ylabel("workers")
        workers.set_ylim(0, max(2, report.peak_workers) + 1)
        lines = ax.get_legend_handles_labels()[0] + workers.get_legend_handles_labels()[0]
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 1000])
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per size and fleet; the median one is kept"
    )
    parser.add_argument("--max-workers", type=int, default=cpu_count(), help="elastic fleet's max")
    parser.add_argument("--files-per-request", type=int, default=100)
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--image-size", default="640x480", help="WxH of the posted JPEGs")
    parser.add_argument("--serve-args", default="", help="extra flags for both dlaas serve runs")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the largest job's runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--simulate-calibration",
        action="store_true",
        help="fit the simulator to these runs and print its predictions",
    )
    args = parser.parse_args()  # fmt: skip

    width, height = (int(v) for v in args.image_size.split("x"))
    model_dir = ensure_model_dir()
    photos = photo_set(max(args.sizes), size=(width, height))
    print(f"{cpu_count()} CPUs; elastic max {args.max_workers} workers; {len(photos)} photos")

    # Fixed and elastic runs alternate, so a slow spell on the shared machine hits both.
    every: dict[tuple[int, str], list[Run]] = {}
    for n in args.sizes:
        for repeat in range(args.repeats):
            for mode in ("fixed", "elastic"):
                run = run_once(mode, photos[:n], args, model_dir)
                every.setdefault((n, mode), []).append(run)
                r = run.report()
                print(f"  {n:5d} {mode:8s} run {repeat + 1}  wall {r.wall_s:7.2f} s  "
                      f"peak {r.peak_workers}  failed {run.failed}", flush=True)  # fmt: skip
    runs = {key: _median_run(found) for key, found in every.items()}

    reports = [runs[key].report() for key in runs]
    print()
    print(format_table(reports))
    ok = True
    for n in args.sizes:
        fixed, elastic = runs[n, "fixed"].report(), runs[n, "elastic"].report()
        speedup = fixed.wall_s / elastic.wall_s if elastic.wall_s else float("inf")
        ends_at_zero = all(r.report().to_zero_s is not None for r in every[n, "elastic"])
        verdict = ""
        if n >= 100:
            good = speedup >= 1.6 and ends_at_zero
            ok &= good
            verdict = "  (target >= 1.6x and back at 0: " + ("met" if good else "NOT met") + ")"
        pairs = [
            f.report().wall_s / e.report().wall_s
            for f, e in zip(every[n, "fixed"], every[n, "elastic"], strict=True)
        ]
        print(
            f"{n:5d} images: elastic {speedup:.2f}x fixed (medians; runs side by side: "
            f"{', '.join(f'{x:.2f}x' for x in pairs)}), back at 0: {ends_at_zero}{verdict}"
        )

    if args.simulate_calibration:
        params = calibrate(runs, args.max_workers)
        print(
            f"\nsimulator fitted: boot_s={params.boot_s:.2f} per_image_s={params.per_image_s:.4f}"
            f" latency_s={params.latency_s:.2f} cores={params.cores}"
        )
        print(f"{'images':>6} {'mode':>8} {'measured s':>11} {'simulated s':>12} {'error':>7}")
        for (n, mode), run in runs.items():
            measured = run.report().wall_s
            predicted = simulate_mode(replace(params, images=n), mode).wall_s
            error = (predicted - measured) / measured if measured else 0.0
            print(f"{n:6d} {mode:>8} {measured:11.2f} {predicted:12.2f} {error:+7.0%}")

    if args.json:
        args.json.write_text(json.dumps([r.row() for r in reports], indent=2))
    if args.plot:
        largest = max(args.sizes)
        plot({mode: runs[largest, mode] for mode in ("fixed", "elastic")}, args.plot)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
