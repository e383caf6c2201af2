"""Does dlaas's memory stay flat under a long steady load?

Starts ``dlaas serve --workers 2`` (``--mode elastic``: the defaults; ``both``: one then
the other), posts ``--images`` mixed-size photos one per request from 64 threads (cycling
over a 1,000-photo set) and prints, after every 1,000 images, the total PSS of the
serve process and all its descendants, and the peak so far. A leak shows as a slope:
the least-squares MB per 1,000 images over the second half of the checkpoints, when
caches and arenas have had time to fill. Goal: peak <= 550 MB with 2 workers, flat.

    .venv/bin/python bench/memory.py [--images 10000] [--mode fixed|elastic|both]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import ServeProcess, ensure_model_dir, multipart, photo_set, post_all
from pss import PssSampler

PSS_GOAL_MB = 550.0
FLAT_MB_PER_1000 = 2.0  # below this, the second half's slope counts as flat


def slope_per_1000(points: list[tuple[int, float]]) -> float:
    """Least-squares MB per 1,000 images through (images, MB) points."""
    if len(points) < 2:
        return 0.0
    xs, ys = [x / 1000 for x, _ in points], [y for _, y in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def run(mode: str, bodies: list[tuple[bytes, str]], args: argparse.Namespace) -> dict[str, Any]:
    model_dir = ensure_model_dir()
    fleet = ["--workers", str(args.workers)] if mode == "fixed" else []
    flags = [*fleet, "--model-dir", str(model_dir), "--log-level", "warning"]
    cycle = itertools.cycle(bodies)
    checkpoints: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ServeProcess(Path(tmp), [*flags, *args.serve_args.split()])
        try:
            server.wait_ready()
            print(f"\n{mode}: dlaas serve {' '.join(flags[:2]) if fleet else '(defaults)'}")
            print(f"{'images':>7} {'img/s':>6} {'PSS MB':>7} {'peak MB':>8}  per process now (MB)")
            with PssSampler(server.proc.pid, interval_s=args.pss_interval_s) as sampler:
                done = 0
                while done < args.images:
                    chunk = [next(cycle) for _ in range(min(args.every, args.images - done))]
                    rate = post_all(server.port, "/v1/classify", chunk, args.threads, expect=200)
                    done += len(chunk)
                    total = sampler.sample(exact=True)
                    checkpoints.append((done, total))
                    now = ", ".join(f"{k} {v:.0f}" for k, v in sampler.current().items())
                    print(
                        f"{done:7d} {rate:6.1f} {total:7.0f} {sampler.peak_total_mb:8.0f}  {now}",
                        flush=True,
                    )
        finally:
            server.stop()
    second_half = checkpoints[len(checkpoints) // 2 :]
    slope = slope_per_1000(second_half)
    peak = sampler.peak_total_mb
    print(f"peak total PSS {peak:.0f} MB (goal <= {PSS_GOAL_MB:.0f}) "
          f"{'PASS' if peak <= PSS_GOAL_MB else 'FAIL'}; peak per process (MB): "
          f"{', '.join(f'{k} {v:.0f}' for k, v in sampler.peaks().items())}")  # fmt: skip
    print(f"slope over the second half ({len(second_half)} checkpoints): {slope:+.1f} MB per "
          f"1,000 images (flat: |slope| < {FLAT_MB_PER_1000:.0f}) "
          f"{'PASS' if abs(slope) < FLAT_MB_PER_1000 else 'FAIL'}")  # fmt: skip
    return {
        "mode": mode,
        "checkpoints": checkpoints,
        "peak_total_mb": peak,
        "peak_per_process_mb": sampler.peaks(),
        "slope_mb_per_1000": slope,
        "sampler_cpu_s": sampler.cpu_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--set", type=int, default=1000, help="distinct photos, cycled")
    parser.add_argument("--every", type=int, default=1000, help="images between checkpoints")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs=2, default=[320, 1600], metavar=("MIN", "MAX"))
    parser.add_argument("--mode", choices=["fixed", "elastic", "both"], default="fixed")
    parser.add_argument("--workers", type=int, default=2, help="for fixed")
    parser.add_argument("--serve-args", default="", help="extra flags for dlaas serve")
    parser.add_argument("--pss-interval-s", type=float, default=0.25)
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args()

    photos = photo_set(min(args.set, args.images), sizes=(args.sizes[0], args.sizes[1]))
    bodies = [multipart("file", [("photo.jpg", b)]) for b in photos]
    print(
        f"{args.images} images, one per request, {args.threads} threads, cycling over "
        f"{len(photos)} photos, long side {args.sizes[0]}..{args.sizes[1]} px"
    )
    modes = ["fixed", "elastic"] if args.mode == "both" else [args.mode]
    results = [run(mode, bodies, args) for mode in modes]
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args), "runs": results}, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
