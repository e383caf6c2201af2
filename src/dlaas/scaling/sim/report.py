"""What a simulated (or measured) run reports, and the table that prints it.

``bench/elastic.py`` builds the same ``ModeReport`` from real runs, so both print one table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dlaas.scaling.sim.params import SimParams

# The seed's published figures, in minutes: {images: {mode: minutes}}.
SEED_MINUTES: dict[int, dict[str, float]] = {
    10: {"fixed": 6.0, "elastic": 4.0},
    30: {"fixed": 11.0, "elastic": 5.0},
}


@dataclass(frozen=True)
class ModeReport:
    """One run of one fleet. Also what ``bench/elastic.py`` builds from real runs."""

    mode: str  # "fixed" or "elastic"
    images: int
    results: int
    wall_s: float  # first arrival -> last result
    worker_s: float  # integral of live workers (starting + running + draining)
    peak_workers: int
    to_zero_s: float | None  # last result -> 0 workers; None if the fleet stays up
    timeline: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("timeline")
        return data


@dataclass(frozen=True)
class RunReport:
    params: SimParams
    fixed: ModeReport
    elastic: ModeReport

    @property
    def speedup(self) -> float:
        return self.fixed.wall_s / self.elastic.wall_s if self.elastic.wall_s else math.inf


def format_table(
    reports: Sequence[ModeReport], seed_minutes: Mapping[int, Mapping[str, float]] = SEED_MINUTES
) -> str:
    """The table both ``dlaas simulate`` and ``bench/elastic.py`` print."""
    header = ("images", "mode", "wall s", "wall min", "worker-s", "peak", "to 0 s", "seed min")
    rows = [header]
    for r in reports:
        seed = seed_minutes.get(r.images, {}).get(r.mode)
        rows.append(
            (
                str(r.images),
                r.mode,
                f"{r.wall_s:.1f}",
                f"{r.wall_s / 60:.2f}",
                f"{r.worker_s:.1f}",
                str(r.peak_workers),
                "-" if r.to_zero_s is None else f"{r.to_zero_s:.1f}",
                "-" if seed is None else f"{seed:g}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
