"""One warm image at a time: how far dlaas's answer lags the bare model, and where.

A client sends the same 451x300 JPEG (scikit-image's ``chelsea``) to ``POST /v1/classify``
one request after another, on one keep-alive connection, as a user of a synchronous API
does. The systems, each started fresh and warmed up in its slot, slots rotating by round:

- peer:    the plain FastAPI app of bench/peer_fastapi.py (decode + ORT in its handler);
- fixed:   ``dlaas serve --workers 2``;
- elastic: ``dlaas serve`` with its defaults, after the warm-up has started a worker.

The bare model (decode + ORT in one process, one thread, no I/O) runs in a process of its
own for the whole bench, and every request to a system alternates with one bare
inference, so each system is compared with the bare figure of the same moments on this
shared, noisy machine. The goals (issue 16): p50 <= bare p50 + 8 ms and p99 <= bare p50
+ 20 ms, as medians over the rounds. Each dlaas result carries ``timings_ms`` with its
hops (web in, queue, worker, reply, web out); "http" is what the client saw beyond the
web tier's own total (uvicorn, the socket and the client).

    .venv/bin/python bench/latency.py [--requests 60] [--repeats 3] [--only fixed]
        [--serve-args "--max-batch-delay-ms 10"] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common import LeanClient, ServeProcess, cpu_count, ensure_model_dir, multipart
from peers import peer_app

SYSTEMS = ("peer", "fixed", "elastic")
P50_GOAL_MS = 8.0  # over the bare p50
P99_GOAL_MS = 20.0
# The hops of one request, in order, as the result's timings_ms names them.
HOPS = ("web_in", "queue_wait", "worker", "reply", "web_out")
WORKER_PARTS = ("fetch", "decode", "infer_batch")


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


@dataclass
class Run:
    """One system's slot in one round, with the bare inferences interleaved with it."""

    latencies_ms: list[float]
    bare_ms: list[float]
    hops_ms: dict[str, float] = field(default_factory=dict)  # medians over the requests

    @property
    def p50(self) -> float:
        return p(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return p(self.latencies_ms, 99)

    @property
    def bare_p50(self) -> float:
        return p(self.bare_ms, 50)


def chelsea_jpeg() -> bytes:
    """The issue's photo: 451x300, a cat."""
    from skimage import data

    buf = io.BytesIO()
    photo = data.chelsea()  # type: ignore[no-untyped-call]
    Image.fromarray(photo).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _bare_server(model_dir: str, image: bytes, conn: Connection) -> None:
    """Answer each message with the ms of one decode + ORT run; None ends it."""
    from dlaas.model import Classifier, ensure_model

    clf = Classifier(ensure_model(Path(model_dir)), intra_op_num_threads=1)
    while conn.recv() is not None:
        started = time.perf_counter()
        clf.predict(np.stack([clf.preprocess(image)]))
        conn.send((time.perf_counter() - started) * 1000)


class Bare:
    """The bare model in its own process, so this one stays a light client."""

    def __init__(self, model_dir: Path, image: bytes) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_bare_server, args=(str(model_dir), image, child))
        self.proc.start()
        for _ in range(20):
            self.once()

    def once(self) -> float:
        self.conn.send(True)
        ms: float = self.conn.recv()
        return ms

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join()


def post_sequentially(port: int, image: bytes, bare: Bare, args: argparse.Namespace) -> Run:
    body, content_type = multipart("file", [("chelsea.jpg", image)])
    client = LeanClient(port)
    latencies, bare_ms, hops = [], [], []
    try:
        for i in range(args.warmup + args.requests):
            started = time.perf_counter()
            status, text = client.post("/v1/classify", body, content_type)
            elapsed_ms = (time.perf_counter() - started) * 1000
            assert status == 200, (status, text[:300])
            if i < args.warmup:
                continue
            latencies.append(elapsed_ms)
            bare_ms.append(bare.once())
            result = json.loads(text)
            timings = dict(result.get("timings_ms", {}))
            if "worker" not in timings and result.get("received_at"):  # older records
                timings["worker"] = (result["completed_at"] - result["received_at"]) * 1000
            if "web_total" in timings:
                timings["http"] = elapsed_ms - timings["web_total"]
            hops.append(timings)
    finally:
        client.close()
    keys = {k for t in hops for k in t}
    medians = {k: statistics.median(t[k] for t in hops if k in t) for k in keys}
    return Run(latencies, bare_ms, medians)


def run_system(
    system: str, image: bytes, bare: Bare, args: argparse.Namespace, model_dir: Path
) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        if system == "peer":
            with peer_app(model_dir, Path(tmp) / "peer.log") as (_pid, port):
                return post_sequentially(port, image, bare, args)
        fleet = ["--workers", str(args.workers)] if system == "fixed" else []
        server = ServeProcess(
            Path(tmp),
            [*fleet, "--model-dir", str(model_dir), *args.serve_args],  # logs at info, as shipped
        )
        try:
            server.wait_ready()
            return post_sequentially(server.port, image, bare, args)
        finally:
            server.stop()


def _median(rounds: list[dict[str, Run]], system: str, of: Callable[[Run], float]) -> float:
    return statistics.median(of(r[system]) for r in rounds)


def report(rounds: list[dict[str, Run]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"systems": {}}
    systems = [s for s in SYSTEMS if s in args.only]
    every_bare = [ms for r in rounds for run in r.values() for ms in run.bare_ms]
    print(f"\nlatency per request, ms ({args.requests} in a row; medians over rounds):")
    print(f"  bare     p50 {p(every_bare, 50):6.1f}  p99 {p(every_bare, 99):6.1f}  (all slots)")
    for system in systems:
        p50, p99 = (
            _median(rounds, system, lambda r: r.p50),
            _median(rounds, system, lambda r: r.p99),
        )
        print(f"  {system:8s} p50 {p50:6.1f}  p99 {p99:6.1f}")
    out["bare"] = {"p50_ms": p(every_bare, 50), "p99_ms": p(every_bare, 99)}

    print("\nover the bare p50 of the same slot, ms (median over rounds):")
    for system in systems:
        d50 = [r[system].p50 - r[system].bare_p50 for r in rounds]
        d99 = [r[system].p99 - r[system].bare_p50 for r in rounds]
        m50, m99 = statistics.median(d50), statistics.median(d99)
        line = f"  {system:8s} p50 +{m50:5.1f}  p99 +{m99:5.1f}"
        if system != "peer":
            ok = m50 <= P50_GOAL_MS and m99 <= P99_GOAL_MS
            line += f"   (goal +{P50_GOAL_MS:g} / +{P99_GOAL_MS:g}) {'PASS' if ok else 'FAIL'}"
        rounded = [(round(a, 1), round(b, 1)) for a, b in zip(d50, d99, strict=True)]
        print(f"{line}   rounds (p50, p99) {rounded}")
        out["systems"][system] = {
            "p50_over_bare_ms": m50,
            "p99_over_bare_ms": m99,
            "rounds": [asdict(r[system]) for r in rounds],
        }

    dlaas = [s for s in systems if s in ("fixed", "elastic")]
    if dlaas:
        names = (*HOPS, "http")
        print("\nwhere one request's time goes, ms (median request, median over rounds):")
        header = "".join(f"{n:>11s}" for n in names)
        print(f"  {'':8s}{header}   worker: fetch/decode/infer")
        for system in dlaas:

            def med(key: str, system: str = system) -> float | None:
                values = [r[system].hops_ms[key] for r in rounds if key in r[system].hops_ms]
                return statistics.median(values) if values else None

            cells = "".join(
                f"{v:11.2f}" if (v := med(n)) is not None else f"{'-':>11s}" for n in names
            )
            parts = "/".join(f"{v:.1f}" if (v := med(n)) is not None else "-" for n in WORKER_PARTS)
            print(f"  {system:8s}{cells}   {parts}")
            out["systems"][system]["hops_ms"] = {n: med(n) for n in (*names, *WORKER_PARTS)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--workers", type=int, default=cpu_count(), help="for fixed")
    parser.add_argument(
        "--serve-args", default="", type=str.split, help="extra flags for both dlaas modes"
    )
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args()

    model_dir = ensure_model_dir()
    image = chelsea_jpeg()
    print(
        f"{cpu_count()} CPUs; one 451x300 JPEG ({len(image) / 1e3:.0f} kB), {args.requests} "
        f"requests in a row after {args.warmup} warm-up ones, each followed by one bare "
        f"inference; {args.repeats} rounds"
    )
    bare = Bare(model_dir, image)
    rounds: list[dict[str, Run]] = []
    order = [s for s in SYSTEMS if s in args.only]
    try:
        for i in range(args.repeats):
            rounds.append({})
            for system in order[i % len(order) :] + order[: i % len(order)]:
                run = run_system(system, image, bare, args, model_dir)
                rounds[-1][system] = run
                print(
                    f"  round {i + 1} {system:8s} p50 {run.p50:6.1f} ms  p99 {run.p99:6.1f} ms"
                    f"  (bare p50 {run.bare_p50:5.1f} ms)",
                    flush=True,
                )
    finally:
        bare.close()
    figures = report(rounds, args)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        figures = {"config": {**config, "cpus": cpu_count()}, **figures}
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
