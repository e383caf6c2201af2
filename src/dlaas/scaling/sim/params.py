"""What one simulated scenario is: ``SimParams``, and the presets it starts from.

The presets and their calibration are described in docs/scaling.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dlaas.defaults import BATCH_SIZE, TARGET_BACKLOG_PER_WORKER, cpu_count
from dlaas.errors import ConfigError
from dlaas.scaling.policy import PolicyConfig


@dataclass(frozen=True)
class SimParams:
    """One scenario. Times in seconds, rates in images per second."""

    images: int = 1000
    arrival_rate: float | None = None  # None: all images arrive at once (a burst)
    boot_s: float = 1.5  # launch -> first receive (process start, model load)
    per_batch_s: float = 0.02  # fixed cost of one batch (fetch, forward-pass overhead)
    per_image_s: float = 0.03  # marginal cost of one image (decode, inference, store)
    # Per-job time outside the workers (upload, enqueue, the result's way back): it is
    # added to the wall time and matters only for small jobs.
    latency_s: float = 0.0
    batch_size: int = BATCH_SIZE
    idle_timeout_s: float = 30.0
    scale_interval_s: float = 1.0
    min_workers: int = 0
    max_workers: int = field(default_factory=cpu_count)
    target_backlog_per_worker: int | None = None  # None: the policy's default
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 15.0
    max_message_age_s: float | None = None
    cores: float | None = None  # CPUs shared by busy workers; None: one machine each
    fixed_workers: int = 1
    fixed_warm: bool = True  # fixed workers are up before the job and never idle-exit
    max_sim_s: float = 30 * 24 * 3600.0

    def __post_init__(self) -> None:
        problems = []
        if self.images < 0:
            problems.append(f"images must be 0 or more, got {self.images}")
        if self.arrival_rate is not None and self.arrival_rate <= 0:
            problems.append(f"arrival rate must be above 0, got {self.arrival_rate}")
        if self.batch_size < 1:
            problems.append(f"batch size must be at least 1, got {self.batch_size}")
        if self.fixed_workers < 1:
            problems.append(f"the fixed fleet needs at least 1 worker, got {self.fixed_workers}")
        if self.cores is not None and self.cores <= 0:
            problems.append(f"cores must be above 0, got {self.cores}")
        if self.scale_interval_s <= 0:
            problems.append(f"scale interval must be above 0, got {self.scale_interval_s}")
        times = ("boot_s", "per_batch_s", "per_image_s", "latency_s", "idle_timeout_s")
        problems += [f"{name} must be 0 or more" for name in times if getattr(self, name) < 0]
        if problems:
            raise ConfigError("invalid simulation: " + "; ".join(problems))

    @property
    def target(self) -> int:
        return self.target_backlog_per_worker or TARGET_BACKLOG_PER_WORKER

    @property
    def workers(self) -> None:
        """The simulated service is elastic; ``fixed_config`` sizes the fixed fleet."""
        return None

    def elastic_config(self) -> PolicyConfig:
        return PolicyConfig.from_settings(self)

    def fixed_config(self) -> PolicyConfig:
        """A fleet of ``fixed_workers``: always on when warm, else started on demand."""
        return replace(
            self.elastic_config(),
            min_workers=self.fixed_workers if self.fixed_warm else 0,
            max_workers=self.fixed_workers,
        )


def local_preset() -> SimParams:
    """This machine running ``dlaas serve``; see docs/scaling.md for the calibration."""
    cpus = cpu_count()
    # Fitted by `bench/elastic.py --simulate-calibration` on a 2-vCPU machine
    # (docs/performance.md): within 8% of every measured run, 10 to 1,000 images.
    return SimParams(
        boot_s=0.27,
        per_batch_s=0.0,
        per_image_s=0.0175,
        latency_s=0.13,
        batch_size=16,
        max_workers=cpus,
        cores=cpus,
        idle_timeout_s=30.0,
        downscale_delay_s=15.0,
        scale_interval_s=1.0,
        fixed_workers=1,
        fixed_warm=True,
    )


def seed_preset() -> SimParams:
    """The seed: one new Python process per image on t2.micro-class EC2 instances.

    Its controller is ``min(queue_length, 19)`` with no cooldown (target 1, max 19,
    no delays) and its instances terminate themselves once the queue is empty, so
    even its one-instance "fixed" setting boots on demand. ``boot_s`` and
    ``per_image_s`` are fitted to the two fixed figures; the elastic ones are then
    predictions (docs/scaling.md).
    """
    return SimParams(
        boot_s=120.0,  # a t2.micro-class instance to a running worker (~1-2 min)
        per_batch_s=0.0,
        per_image_s=14.0,
        latency_s=105.0,  # per job outside the instances: uploads, controller, result polling
        batch_size=1,
        target_backlog_per_worker=1,
        max_workers=19,
        upscale_delay_s=0.0,
        downscale_delay_s=0.0,
        idle_timeout_s=10.0,
        scale_interval_s=10.0,
        cores=None,
        fixed_workers=1,
        fixed_warm=False,
    )


PRESETS: dict[str, Callable[[], SimParams]] = {"local": local_preset, "seed": seed_preset}
