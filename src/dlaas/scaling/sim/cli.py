"""``dlaas simulate``: a fixed and an elastic fleet on the same job, in simulated time.

Every run compares a *fixed* fleet with the *elastic* one and reports what
``bench/elastic.py`` measures on the real service: wall time to the last result,
worker-seconds, peak workers and seconds from the last result until 0 workers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, replace

from dlaas.errors import ConfigError, ScalingError
from dlaas.scaling.sim.engine import simulate
from dlaas.scaling.sim.params import PRESETS, SimParams
from dlaas.scaling.sim.report import format_table


def _cores(value: str) -> float | None:
    if value.lower() in ("none", "unlimited", "0"):
        return None
    return float(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlaas simulate",
        description="Simulate a fixed and an elastic fleet on the same job, in simulated time.",
        epilog="Flags left out take the preset's value; docs/scaling.md explains each preset.",
        argument_default=argparse.SUPPRESS,  # only the flags given override the preset
    )
    add = parser.add_argument
    add(
        "--preset",
        choices=sorted(PRESETS),
        default="local",
        help="starting values (default: local)",
    )
    add("--images", type=int, nargs="+", default=[10, 30, 100, 1000], help="job sizes to run")
    add("--arrival-rate", type=float, help="images per second (default: all at once)")
    add("--boot-s", type=float, help="launch to first receive, seconds")
    add("--per-batch-s", type=float, help="fixed cost of one batch, seconds")
    add("--per-image-s", type=float, help="cost of each image in a batch, seconds")
    add("--latency-s", type=float, help="per-job time outside the workers, seconds")
    add("--batch-size", type=int, help="most images per batch")
    add("--min-workers", type=int, help="elastic fleet: fewest workers")
    add("--max-workers", type=int, help="elastic fleet: most workers")
    add("--target-backlog-per-worker", type=int, help="messages per worker (default 4 x batch)")
    add("--upscale-delay-s", type=float)
    add("--downscale-delay-s", type=float)
    add("--max-message-age-s", type=float)
    add("--idle-timeout-s", type=float, help="a worker exits after this long without messages")
    add("--scale-interval-s", type=float, help="controller period, seconds")
    add("--cores", type=_cores, help="CPUs the busy workers share; 'none' for one machine each")
    add("--fixed", type=int, dest="fixed_workers", metavar="N", help="workers in the fixed fleet")
    warm = parser.add_mutually_exclusive_group()
    warm.add_argument(
        "--fixed-warm",
        dest="fixed_warm",
        action="store_true",
        help="the fixed fleet is up before the job and never idle-exits",
    )
    warm.add_argument(
        "--fixed-cold",
        dest="fixed_warm",
        action="store_false",
        help="the fixed fleet starts on demand and idle-exits, like the seed's",
    )
    add("--json", action="store_true", default=False, help="print JSON lines, not a table")
    return parser  # fmt: skip


def params_from_args(args: argparse.Namespace, images: int) -> SimParams:
    """The preset with the flags that were given on top."""
    base = PRESETS[args.preset]()
    names = set(SimParams.__dataclass_fields__) - {"images"}
    return replace(base, images=images, **{k: v for k, v in vars(args).items() if k in names})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dlaas simulate``; prints the same table as bench/elastic.py."""
    import json
    import sys

    args = build_parser().parse_args(argv)
    try:
        reports = [simulate(params_from_args(args, n)) for n in args.images]
    except (ConfigError, ScalingError) as exc:
        print(f"dlaas simulate: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for report in reports:
            for mode in (report.fixed, report.elastic):
                print(json.dumps({**mode.row(), "params": asdict(report.params)}))
        return 0
    params = reports[0].params if reports else params_from_args(args, 0)
    shown = {k: v for k, v in asdict(params).items() if k not in ("images", "max_sim_s")}
    print(f"preset {args.preset}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    print(format_table([m for r in reports for m in (r.fixed, r.elastic)]))
    return 0
