"""dlaas next to what it must beat, side by side in one run.

Four systems classify the same mixed-size photos, one per request, from the same
64-thread keep-alive client on this box:

- bare:    the decode+ORT loop, one process per core, one thread each, no I/O;
- peer:    a plain FastAPI app doing decode+ORT in its handler (bench/peer_fastapi.py);
- fixed:   ``dlaas serve --workers <cpus>``;
- elastic: ``dlaas serve`` as a user starts it (only port, data and model dirs, log level).

In each round every system is started fresh, warmed up with 64 requests, measured, and
stopped; the order rotates between rounds. The machines are shared and noisy, so the
ratios to read are medians of pairs taken in the same round. During the service runs
the PSS of every process is sampled (bench/pss.py), and the CPU each tier spent.

``--queue URL`` adds ``fixed-q``: the fixed service on that queue (say a Redis,
``redis://127.0.0.1:6379/0``, a fresh stream per start) next to ``fixed`` on its
default sqlite queue, and prints their end-to-end ratio from the same rounds.

``--client triton`` also sends the photos through Triton's own client to ``/v2`` (the
Open Inference Protocol, bench/triton_load.py) on the same fixed and elastic services,
before or after the multipart client (alternating by round), and prints the two side by side.

    .venv/bin/python bench/throughput.py [--images 1000] [--repeats 3] [--sizes 320 1600]
        [--only bare fixed] [--endpoint / | /v1/classify] [--client triton] [--json out.json]
        [--queue redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from common import (
    ServeProcess,
    bare_loop_img_s,
    cpu_count,
    ensure_model_dir,
    multipart,
    photo_set,
    post_all,
)
from pss import PssSampler
from triton_load import triton_img_s

SYSTEMS = ("bare", "peer", "fixed", "elastic")
# (numerator, denominator, goal): the targets.
RATIOS = (
    ("elastic", "fixed", 0.97),
    ("elastic", "peer", 1.1),
    ("fixed", "peer", 1.1),
    ("elastic", "bare", 0.92),
    ("fixed", "bare", 0.92),
)
PSS_GOAL_MB = 550.0  # all dlaas processes, 2 workers
WARMUP = 64


@dataclass
class Measure:
    """One system's slot in one round."""

    img_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # by tier, over the measured part
    pss_peak_total_mb: float = 0.0
    pss_peaks_mb: dict[str, float] = field(default_factory=dict)
    triton_img_s: float | None = None  # the same service through Triton's client


def _cpu_s(pid: int, with_children: bool) -> float:
    """CPU seconds of ``pid``; ``with_children`` adds those of the children it reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_s_by_tier(root_pid: int) -> dict[str, float]:
    """CPU seconds so far: the root process, everything below it, and this client.

    Workers that exited were reaped by the web tier or the fork server, so their time is
    in that parent's children's counters; "workers" adds those, and so keeps the time of
    an elastic fleet's workers that idled out.
    """
    from tests.support import descendants_of

    below = sum(_cpu_s(pid, True) for pid in descendants_of(root_pid))
    return {
        "web": _cpu_s(root_pid, False),
        "workers": below + _cpu_s(root_pid, True) - _cpu_s(root_pid, False),
        "client": time.process_time(),
    }


def measured(root_pid: int, label: str, run: Callable[[], float], interval_s: float) -> Measure:
    """Run ``run()`` (returns img/s) while sampling PSS and counting CPU.

    The sampler runs in this process; its CPU is reported apart from the client's.
    """
    sampler = PssSampler(root_pid, interval_s=interval_s or 3600.0, root_label=label)
    before = cpu_s_by_tier(root_pid)
    with sampler:
        rate = run()
    cpu_s = {tier: t - before[tier] for tier, t in cpu_s_by_tier(root_pid).items()}
    cpu_s["client"] -= sampler.cpu_s
    cpu_s["pss sampler"] = sampler.cpu_s
    return Measure(rate, cpu_s, sampler.peak_total_mb, sampler.peaks())


@contextmanager
def peer_app(model_dir: Path, log_path: Path) -> Iterator[tuple[int, int]]:
    """The FastAPI peer in its own process; yields (pid, port) once it answers."""
    from tests.support import free_port

    port = free_port()
    script = Path(__file__).with_name("peer_fastapi.py")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--port", str(port), "--model-dir", str(model_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the peer did not start:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            yield proc.pid, port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_system(
    system: str,
    images: list[bytes],
    bodies: dict[str, list[tuple[bytes, str]]],
    args: argparse.Namespace,
    model_dir: Path,
    triton_first: bool = False,
) -> Measure:
    if system == "bare":
        return Measure(bare_loop_img_s(model_dir, images, processes=cpu_count()))
    endpoint = "/v1/classify" if system == "peer" else args.endpoint
    posts = bodies[endpoint]

    def post(items: list[tuple[bytes, str]]) -> float:
        return post_all(port, endpoint, items, args.threads, expect=200)

    with tempfile.TemporaryDirectory() as tmp:
        if system == "peer":
            with peer_app(model_dir, Path(tmp) / "peer.log") as (pid, port):
                post(posts[:WARMUP])
                return measured(pid, "app", lambda: post(posts), args.pss_interval_s)
        fleet = ["--workers", str(args.workers)] if system.startswith("fixed") else []
        if system == "fixed-q":
            fleet += ["--queue", fresh_queue(args.queue)]
        extra = [*args.serve_args.split()]
        server = ServeProcess(
            Path(tmp),
            [*fleet, "--model-dir", str(model_dir), "--log-level", "warning", *extra],
        )
        try:
            server.wait_ready()
            port = server.port
            # Elastic: measure right after the warm-up, as a user under steady load would
            # see it; no waiting for the fleet to grow (or shrink) first.
            post(posts[:WARMUP])
            if args.client != "triton":
                return measured(server.proc.pid, "web", lambda: post(posts), args.pss_interval_s)
            triton_img_s(port, images[:WARMUP], args.threads)
            first = triton_img_s(port, images, args.threads) if triton_first else None
            m = measured(server.proc.pid, "web", lambda: post(posts), args.pss_interval_s)
            m.triton_img_s = (
                first if first is not None else triton_img_s(port, images, args.threads)
            )
            return m
        finally:
            server.stop()


def fresh_queue(url: str) -> str:
    """``url`` with a stream of its own on Redis, so no start sees another's leftovers."""
    if not url.startswith(("redis://", "rediss://")):
        return url
    return f"{url.split('?')[0]}?stream=bench-{uuid.uuid4().hex[:8]}"


def median_pairs(
    rounds: list[dict[str, Measure]], num: str, den: str
) -> tuple[float, list[float]] | None:
    pairs = [r[num].img_s / r[den].img_s for r in rounds if num in r and den in r]
    return (statistics.median(pairs), pairs) if pairs else None


def report(rounds: list[dict[str, Measure]], args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Print the figures; return them for ``--json``."""
    out: dict[str, Any] = {"systems": {}, "ratios": {}}
    names = {
        "bare": f"bare decode+ORT loop ({cpu_count()} proc x 1 thread)",
        "peer": "FastAPI peer (1 process, sync handler)",
        "fixed": f"dlaas serve --workers {args.workers}",
        "elastic": "dlaas serve (elastic, defaults)",
        "fixed-q": f"dlaas serve --workers {args.workers} --queue {args.queue}",
    }
    print("\nimg/s per round and median:")
    for system in [s for s in (*SYSTEMS, "fixed-q") if s in rounds[0]]:
        rates = [r[system].img_s for r in rounds]
        med = statistics.median(rates)
        print(f"  {names[system]:42s} {med:6.1f} img/s  rounds {[round(x, 1) for x in rates]}")
        each = [asdict(r[system]) for r in rounds]
        out["systems"][system] = {"median_img_s": med, "rounds": each}

    print("\nratios, median of side-by-side pairs (same round):")
    for num, den, goal in RATIOS:
        found = median_pairs(rounds, num, den)
        if found is None:
            continue
        med, pairs = found
        verdict = "PASS" if med >= goal else "FAIL"
        print(
            f"  {num + '/' + den:16s} {med:5.2f}x  pairs {[round(x, 2) for x in pairs]}"
            f"  (goal >= {goal:.2f}) {verdict}"
        )
        out["ratios"][f"{num}/{den}"] = {"median": med, "pairs": pairs, "goal": goal}
    found = median_pairs(rounds, "fixed-q", "fixed")
    if found is not None:
        med, pairs = found
        label = f"{args.queue.split(':')[0]}/sqlite (fixed-q/fixed)"
        print(f"  {label:16s} {med:5.2f}x  pairs {[round(x, 2) for x in pairs]}  end to end")
        out["ratios"]["fixed-q/fixed"] = {"median": med, "pairs": pairs, "goal": None}

    if args.client == "triton":
        print("\nthrough Triton's client (POST /v2/.../infer, binary data, top-5), same services:")
        for system in [s for s in ("fixed", "elastic") if s in args.only]:
            rates = [r[system].triton_img_s or 0.0 for r in rounds]
            pairs = [t / r[system].img_s for t, r in zip(rates, rounds, strict=True)]
            med = statistics.median(rates)
            print(
                f"  {system:8s} {med:6.1f} img/s  triton/multipart {statistics.median(pairs):.2f}x"
                f"  pairs {[round(x, 2) for x in pairs]}"
            )
            out["systems"][system]["triton_median_img_s"] = med

    print("\nCPU per image by tier (ms, medians over rounds; client = this process):")
    for system in [s for s in ("fixed", "fixed-q", "elastic", "peer") if s in rounds[0]]:
        tiers = rounds[0][system].cpu_s
        per = {t: statistics.median(r[system].cpu_s[t] for r in rounds) * 1000 / n for t in tiers}
        total = sum(per.values())
        if system == "peer":
            text = f"app {per['web']:.1f}, client {per['client']:.1f}"
        else:
            text = (
                f"web tier {per['web']:.1f}, workers {per['workers']:.1f}, "
                f"client {per['client']:.1f}"
            )
        text += f", pss sampler {per['pss sampler']:.1f}"
        print(f"  {system:8s} {text}  (total {total:.1f})")
        out["systems"][system]["cpu_ms_per_image"] = per
    if "bare" in args.only:
        bare = statistics.median(r["bare"].img_s for r in rounds)
        print(f"  bare     {1000 * cpu_count() / bare:.1f} (all cores busy, no I/O)")

    print("\npeak PSS (MB), per round: total; per process")
    for system in [s for s in ("fixed", "fixed-q", "elastic", "peer") if s in rounds[0]]:
        for i, r in enumerate(rounds, 1):
            m = r[system]
            parts = ", ".join(f"{label} {mb:.0f}" for label, mb in m.pss_peaks_mb.items())
            print(f"  {system:8s} round {i}: {m.pss_peak_total_mb:5.0f}  ({parts})")
        peak = max(r[system].pss_peak_total_mb for r in rounds)
        out["systems"][system]["pss_peak_total_mb"] = peak
        if system != "peer":
            verdict = "PASS" if peak <= PSS_GOAL_MB else "FAIL"
            goal = f"(goal <= {PSS_GOAL_MB:.0f} with 2 workers) {verdict}"
            print(f"  {system:8s} peak over rounds: {peak:.0f} MB  {goal}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    parser.add_argument("--endpoint", default="/v1/classify", choices=["/", "/v1/classify"])
    parser.add_argument(
        "--client",
        default="multipart",
        choices=["multipart", "triton"],
        help="triton: also measure fixed and elastic through Triton's client on /v2",
    )
    parser.add_argument("--sizes", type=int, nargs=2, default=[320, 1600], metavar=("MIN", "MAX"))
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--workers", type=int, default=cpu_count(), help="for fixed")
    parser.add_argument("--serve-args", default="", help="extra flags for both dlaas modes")
    parser.add_argument(
        "--pss-interval-s", type=float, default=0.25, help="PSS sampling period; 0: start/end"
    )
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    parser.add_argument("--queue", default=None, help="also run fixed on this queue URL")
    args = parser.parse_args()

    model_dir = ensure_model_dir()
    images = photo_set(args.images, sizes=(args.sizes[0], args.sizes[1]))
    bodies = {
        endpoint: [multipart(field, [("photo.jpg", b)]) for b in images]
        for endpoint, field in (("/v1/classify", "file"), ("/", "myfile"))
    }
    print(
        f"{cpu_count()} CPUs; {len(images)} photos, long side {args.sizes[0]}..{args.sizes[1]} "
        f"px, {statistics.mean(map(len, images)) / 1e3:.0f} kB avg; {args.threads} client "
        f"threads, one image per request to POST {args.endpoint} (peer: /v1/classify)"
    )
    rounds: list[dict[str, Measure]] = []
    order = [s for s in SYSTEMS if s in args.only]
    if args.queue:
        order.insert(order.index("fixed") + 1 if "fixed" in order else len(order), "fixed-q")
    for i in range(args.repeats):
        rounds.append({})
        for system in order[i % len(order) :] + order[: i % len(order)]:
            m = run_system(system, images, bodies, args, model_dir, triton_first=i % 2 == 1)
            rounds[-1][system] = m
            pss = f"  peak PSS {m.pss_peak_total_mb:.0f} MB" if m.pss_peak_total_mb else ""
            if m.triton_img_s is not None:
                pss += f"  (Triton's client: {m.triton_img_s:.1f} img/s)"
            print(f"  round {i + 1} {system:8s} {m.img_s:7.1f} img/s{pss}", flush=True)
    figures = report(rounds, args, len(images))
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        figures = {"config": {**config, "cpus": cpu_count()}, **figures}
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
