"""What each system under test spent: CPU by tier (the client's included) and PSS.

The CPU counters are the kernel's (``/proc/<pid>/stat``); a worker that already exited was
reaped by its parent, so its time is in that parent's children's counters and counted too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pss import PssSampler


@dataclass
class Measure:
    """One system's slot in one round."""

    img_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # by tier, over the measured part
    pss_peak_total_mb: float = 0.0
    pss_peaks_mb: dict[str, float] = field(default_factory=dict)
    triton_img_s: float | None = None  # the same service through Triton's client
    bare_cpu_ms: float = 0.0  # bare only: its CPU per image, and the batch it ran
    bare_batch: int = 0
    bare_other_img_s: float = 0.0  # the other batch size's rate


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
