"""dlaas next to what it must beat, side by side in one run.

Six systems classify the same mixed-size photos, one per request, from the same
64-thread client on this box, a user's client: ``requests`` with one keep-alive Session per
thread, every answer parsed (``--client-kind lean`` for a bare http.client that parses
nothing):

- bare:     the decode+ORT loop, one process per core, one thread each, no I/O, at its
            faster ORT batch (1 or 8, both timed each round; bench/peers.py);
- minimal:  the bare loop's code behind the thinnest HTTP server (raw ASGI on uvicorn, one
            process per core, nothing checked): the ceiling for any service here
            (bench/peer_minimal.py);
- peer:     a plain FastAPI app doing decode+ORT in its handler (bench/peer_fastapi.py);
- litserve: LitServe, one inference worker per core, batching 8 within 10 ms
            (bench/peer_litserve.py);
- fixed:    ``dlaas serve --workers <cpus>``;
- elastic:  ``dlaas serve`` as a user starts it (only port, data and model dirs, log level).

Both peers run the same model file with the Pillow code a competent engineer writes and
answer the same top-5 JSON as ``/v1/classify`` (bench/peer_model.py). Every system's CPU is
counted by tier, the client's included; the workers' CPU per image is set against the
bare loop's of the same round.

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
import statistics
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from accounting import Measure, measured
from common import (
    ServeProcess,
    cpu_count,
    ensure_model_dir,
    multipart,
    photo_set,
    post_all,
    post_all_as_user,
)
from peers import PEER_SCRIPTS, bare_best, peer_process
from triton_load import triton_img_s

SYSTEMS = ("bare", "minimal", "peer", "litserve", "fixed", "elastic")
PEERS = tuple(PEER_SCRIPTS)
# (numerator, denominator, bar, goal): the bar must hold; the goal is where we aim.
RATIOS = (
    ("elastic", "fixed", 0.97, 0.97),
    ("elastic", "peer", 1.0, 1.1),
    ("fixed", "peer", 1.0, 1.1),
    ("elastic", "litserve", 1.0, 1.1),
    ("fixed", "litserve", 1.0, 1.1),
    ("elastic", "bare", 0.85, 0.92),
    ("fixed", "bare", 0.85, 0.92),
)
# Read, not judged: how near the thinnest HTTP server around the bare loop gets to it (the
# ceiling for any service on this box and client), and how near dlaas gets to that.
CEILING_RATIOS = (("minimal", "bare"), ("elastic", "minimal"), ("fixed", "minimal"))
WORKER_CPU_BAR = 1.05  # the workers' CPU per image over the bare loop's, same round
WEB_CPU_BAR_MS = 2.0
PSS_GOAL_MB = 550.0  # all dlaas processes, 2 workers
WARMUP = 64


def run_system(
    system: str,
    images: list[bytes],
    bodies: dict[str, list[tuple[bytes, str]]],
    args: argparse.Namespace,
    model_dir: Path,
    triton_first: bool = False,
) -> Measure:
    if system == "bare":
        best, other = bare_best(model_dir, images, processes=cpu_count())
        return Measure(
            best.img_s,
            bare_cpu_ms=best.cpu_ms_per_image,
            bare_batch=best.batch_size,
            bare_other_img_s=other.img_s,
        )
    endpoint = "/v1/classify" if system in PEERS else args.endpoint
    posts = bodies[endpoint]
    send = post_all if args.client_kind == "lean" else post_all_as_user

    def post(items: list[tuple[bytes, str]]) -> float:
        return send(port, endpoint, items, args.threads, expect=200)

    with tempfile.TemporaryDirectory() as tmp:
        if system in PEERS:
            with peer_process(system, model_dir, Path(tmp) / "peer.log") as (pid, port):
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


def _names(args: argparse.Namespace) -> dict[str, str]:
    return {
        "bare": f"bare decode+ORT loop ({cpu_count()} proc x 1 thread)",
        "minimal": "minimal HTTP around the bare loop",
        "peer": "FastAPI peer (1 process, sync handler)",
        "litserve": f"LitServe ({cpu_count()} workers, batch 8 / 10 ms)",
        "fixed": f"dlaas serve --workers {args.workers}",
        "elastic": "dlaas serve (elastic, defaults)",
        "fixed-q": f"dlaas serve --workers {args.workers} --queue {args.queue}",
    }


def report(rounds: list[dict[str, Measure]], args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Print the figures; return them for ``--json``."""
    out: dict[str, Any] = {"systems": {}, "ratios": {}}
    names = _names(args)
    print("\nimg/s per round and median:")
    for system in [s for s in (*SYSTEMS, "fixed-q") if s in rounds[0]]:
        rates = [r[system].img_s for r in rounds]
        med = statistics.median(rates)
        print(f"  {names[system]:42s} {med:6.1f} img/s  rounds {[round(x, 1) for x in rates]}")
        each = [asdict(r[system]) for r in rounds]
        out["systems"][system] = {"median_img_s": med, "rounds": each}
    if "bare" in rounds[0]:
        batches = [r["bare"].bare_batch for r in rounds]
        others = [round(r["bare"].bare_other_img_s, 1) for r in rounds]
        print(f"  (bare ran at ORT batch {batches}; the other batch size gave {others})")
    _report_ratios(rounds, args, out)
    if args.client == "triton":
        _report_triton(rounds, args, out)
    _report_cpu(rounds, out, n)
    _report_pss(rounds, out)
    return out


def _report_ratios(
    rounds: list[dict[str, Measure]], args: argparse.Namespace, out: dict[str, Any]
) -> None:
    print("\nratios, median of side-by-side pairs (same round):")
    for num, den, bar, goal in RATIOS:
        found = median_pairs(rounds, num, den)
        if found is None:
            continue
        med, pairs = found
        verdict = "PASS" if med >= bar else "FAIL"
        aim = "" if goal == bar else f", goal {goal:.2f}: {'met' if med >= goal else 'not yet'}"
        print(
            f"  {num + '/' + den:17s} {med:5.2f}x  pairs {[round(x, 2) for x in pairs]}"
            f"  (bar >= {bar:.2f}{aim}) {verdict}"
        )
        out["ratios"][f"{num}/{den}"] = {"median": med, "pairs": pairs, "bar": bar, "goal": goal}
    for num, den in CEILING_RATIOS:
        found = median_pairs(rounds, num, den)
        if found is not None:
            med, pairs = found
            what = "the ceiling" if num == "minimal" else "of the ceiling"
            print(
                f"  {num + '/' + den:17s} {med:5.2f}x  "
                f"pairs {[round(x, 2) for x in pairs]}  ({what})"
            )
            out["ratios"][f"{num}/{den}"] = {"median": med, "pairs": pairs, "goal": None}
    found = median_pairs(rounds, "fixed-q", "fixed")
    if found is not None:
        med, pairs = found
        label = f"{args.queue.split(':')[0]}/sqlite (fixed-q/fixed)"
        print(f"  {label:17s} {med:5.2f}x  pairs {[round(x, 2) for x in pairs]}  end to end")
        out["ratios"]["fixed-q/fixed"] = {"median": med, "pairs": pairs, "goal": None}


def _report_triton(
    rounds: list[dict[str, Measure]], args: argparse.Namespace, out: dict[str, Any]
) -> None:
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


def _report_cpu(rounds: list[dict[str, Measure]], out: dict[str, Any], n: int) -> None:
    print("\nCPU per image by tier (ms, medians over rounds; client = this process):")
    for system in [s for s in ("fixed", "fixed-q", "elastic", *PEERS) if s in rounds[0]]:
        tiers = rounds[0][system].cpu_s
        per = {t: statistics.median(r[system].cpu_s[t] for r in rounds) * 1000 / n for t in tiers}
        total = sum(per.values())
        if system == "peer":
            text = f"app {per['web']:.1f}, client {per['client']:.1f}"
        elif system in ("litserve", "minimal"):  # processes below the one started
            text = f"all processes {per['web'] + per['workers']:.1f}, client {per['client']:.1f}"
        else:
            text = (
                f"web tier {per['web']:.1f}, workers {per['workers']:.1f}, "
                f"client {per['client']:.1f}"
            )
        text += f", pss sampler {per['pss sampler']:.1f}"
        print(f"  {system:8s} {text}  (total {total:.1f})")
        out["systems"][system]["cpu_ms_per_image"] = per
        if system in ("fixed", "elastic"):
            web = per["web"]
            verdict = "PASS" if web <= WEB_CPU_BAR_MS else "FAIL"
            print(f"  {'':8s} web tier {web:.2f} ms per image (bar <= {WEB_CPU_BAR_MS}) {verdict}")
    if "bare" not in rounds[0]:
        return
    bare = [r["bare"].bare_cpu_ms for r in rounds]
    print(f"  bare     {statistics.median(bare):.1f} (its processes' own CPU, no I/O)")
    if "minimal" in rounds[0]:  # its processes do the bare loop's work and HTTP beside the client
        pairs = [_all_cpu_ms(r["minimal"], n) / r["bare"].bare_cpu_ms for r in rounds]
        print(
            f"  minimal  processes' CPU per image / bare's: {statistics.median(pairs):.3f}x  "
            f"pairs {[round(x, 3) for x in pairs]}  (the bare loop's work + HTTP, client alongside)"
        )
        out["ratios"]["minimal cpu/bare cpu"] = {"median": statistics.median(pairs), "pairs": pairs}
    for system in [s for s in ("fixed", "elastic") if s in rounds[0]]:
        pairs = [r[system].cpu_s["workers"] * 1000 / n / r["bare"].bare_cpu_ms for r in rounds]
        med = statistics.median(pairs)
        verdict = "PASS" if med <= WORKER_CPU_BAR else "FAIL"
        print(
            f"  {system:8s} workers' CPU per image / bare's: {med:.3f}x  "
            f"pairs {[round(x, 3) for x in pairs]}  (bar <= {WORKER_CPU_BAR}) {verdict}"
        )
        out["ratios"][f"{system} worker cpu/bare cpu"] = {"median": med, "pairs": pairs}


def _all_cpu_ms(m: Measure, n: int) -> float:
    return (m.cpu_s["web"] + m.cpu_s["workers"]) * 1000 / n


def _report_pss(rounds: list[dict[str, Measure]], out: dict[str, Any]) -> None:
    print("\npeak PSS (MB), per round: total; per process")
    for system in [s for s in ("fixed", "fixed-q", "elastic", *PEERS) if s in rounds[0]]:
        for i, r in enumerate(rounds, 1):
            m = r[system]
            parts = ", ".join(f"{label} {mb:.0f}" for label, mb in m.pss_peaks_mb.items())
            print(f"  {system:8s} round {i}: {m.pss_peak_total_mb:5.0f}  ({parts})")
        peak = max(r[system].pss_peak_total_mb for r in rounds)
        out["systems"][system]["pss_peak_total_mb"] = peak
        if system not in PEERS:
            verdict = "PASS" if peak <= PSS_GOAL_MB else "FAIL"
            goal = f"(goal <= {PSS_GOAL_MB:.0f} with 2 workers) {verdict}"
            print(f"  {system:8s} peak over rounds: {peak:.0f} MB  {goal}")


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
    parser.add_argument(
        "--client-kind",
        default="requests",
        choices=["requests", "lean"],
        help="requests: a user's client, answers parsed; lean: http.client, nothing parsed",
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
        f"threads ({args.client_kind}), one image per request to POST {args.endpoint} "
        "(peers: /v1/classify)"
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
