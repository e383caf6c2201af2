"""The autoscaling policy: a pure function from a snapshot of load to a worker count.

``decide(snapshot, config, state) -> (desired, state)`` holds no clock, thread or I/O,
so the controller, the simulator and the tests all run the very same rule. The core
rule sizes the fleet to the backlog, *in-flight messages included* (a worker busy with
a batch is load, not spare capacity). Small wrappers around it add what production
autoscalers learned the hard way: start from zero at once, wait before changing the
count so it does not flap, and add a worker when messages grow too old.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

from dlaas.defaults import TARGET_BACKLOG_PER_WORKER, cpu_count
from dlaas.errors import ConfigError

DEFAULT_UPSCALE_DELAY_S = 0.0
DEFAULT_DOWNSCALE_DELAY_S = 15.0

Direction = Literal["up", "down"]


class ScalingSettings(Protocol):
    """What a policy is built from: ``Settings`` for a real service, ``SimParams`` for a
    simulated one, so that both go through ``PolicyConfig.from_settings``."""

    @property
    def workers(self) -> int | None: ...  # a fixed fleet of this size; None: elastic
    @property
    def min_workers(self) -> int: ...
    @property
    def max_workers(self) -> int: ...
    @property
    def target_backlog_per_worker(self) -> int | None: ...  # None: the default
    @property
    def upscale_delay_s(self) -> float: ...
    @property
    def downscale_delay_s(self) -> float: ...
    @property
    def max_message_age_s(self) -> float | None: ...


@dataclass(frozen=True)
class Snapshot:
    """What the controller saw at ``now_s``: the queue and the launcher's fleet."""

    now_s: float
    visible: int
    in_flight: int
    oldest_age_s: float = 0.0
    running: int = 0
    starting: int = 0  # launched but not yet taking messages; counts as capacity

    @property
    def backlog(self) -> int:
        return self.visible + self.in_flight

    @property
    def current(self) -> int:
        return self.running + self.starting


@dataclass(frozen=True)
class PolicyConfig:
    """How many messages one worker should own, the bounds, and the delays."""

    target_backlog_per_worker: int = TARGET_BACKLOG_PER_WORKER
    min_workers: int = 0
    max_workers: int = field(default_factory=cpu_count)
    upscale_delay_s: float = DEFAULT_UPSCALE_DELAY_S
    downscale_delay_s: float = DEFAULT_DOWNSCALE_DELAY_S
    max_message_age_s: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.target_backlog_per_worker < 1:
            target = self.target_backlog_per_worker
            problems.append(f"target_backlog_per_worker must be at least 1, got {target}")
        if self.min_workers < 0:
            problems.append(f"min_workers must be 0 or more, got {self.min_workers}")
        if self.max_workers < self.min_workers:
            problems.append(
                f"max_workers ({self.max_workers}) is below min_workers ({self.min_workers})"
            )
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            problems.append("upscale_delay_s and downscale_delay_s must be 0 or more")
        if self.max_message_age_s is not None and self.max_message_age_s <= 0:
            problems.append(f"max_message_age_s must be above 0, got {self.max_message_age_s}")
        if problems:
            raise ConfigError("invalid scaling policy: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, settings: ScalingSettings) -> PolicyConfig:
        """The one way to build a policy: elastic between the bounds, or a fixed fleet
        (min = max = ``workers``) that is the same loop held at one size."""
        fixed = settings.workers
        return cls(
            target_backlog_per_worker=settings.target_backlog_per_worker
            or TARGET_BACKLOG_PER_WORKER,
            min_workers=settings.min_workers if fixed is None else fixed,
            max_workers=settings.max_workers if fixed is None else fixed,
            upscale_delay_s=settings.upscale_delay_s,
            downscale_delay_s=settings.downscale_delay_s,
            max_message_age_s=settings.max_message_age_s,
        )

    def clamp(self, n: int) -> int:
        return max(self.min_workers, min(self.max_workers, n))


@dataclass(frozen=True)
class PolicyState:
    """A change waiting out its delay: its direction, since when, and recent proposals.

    Once proposals in one direction have lasted the delay, the policy applies the
    *largest* proposal of the last ``downscale_delay_s`` when scaling down (one quiet
    second cannot shrink the fleet) and the *smallest* of the last ``upscale_delay_s``
    when scaling up (one spike cannot grow it): Kubernetes' stabilization window.
    """

    direction: Direction | None = None
    since_s: float = 0.0
    window: tuple[tuple[float, int], ...] = ()  # (time, proposal), oldest first

    @property
    def target(self) -> int | None:
        """The latest proposal while a change waits, else None."""
        return self.window[-1][1] if self.window else None


def core_rule(snapshot: Snapshot, config: PolicyConfig) -> int:
    """``ceil((visible + in_flight) / target)``, clamped to ``[min, max]``."""
    return config.clamp(math.ceil(snapshot.backlog / config.target_backlog_per_worker))


def is_cold_start(snapshot: Snapshot) -> bool:
    """No worker running or starting while messages wait: nobody will ever take them."""
    return snapshot.current == 0 and snapshot.backlog > 0


def is_too_old(snapshot: Snapshot, config: PolicyConfig) -> bool:
    """A waiting message is older than ``max_message_age_s`` and no new worker is on its way.

    Only visible messages count (a message in a batch is being served), and one extra
    worker at a time is enough: the next one comes only once this one has started.
    """
    return (
        config.max_message_age_s is not None
        and snapshot.visible > 0
        and snapshot.oldest_age_s > config.max_message_age_s
        and snapshot.starting == 0
    )


def decide(snapshot: Snapshot, config: PolicyConfig, state: PolicyState) -> tuple[int, PolicyState]:
    """Return the number of workers to have now (running + starting) and the new state."""
    current = snapshot.current
    proposal = core_rule(snapshot, config)
    urgent = is_cold_start(snapshot)
    if is_too_old(snapshot, config):
        proposal = max(proposal, config.clamp(current + 1))
        urgent = True

    if proposal == current:
        return current, PolicyState()
    if proposal > current:
        if urgent or config.upscale_delay_s == 0:
            return proposal, PolicyState()
        return _stabilize("up", proposal, snapshot, config.upscale_delay_s, state)
    if config.downscale_delay_s == 0:
        return proposal, PolicyState()
    return _stabilize("down", proposal, snapshot, config.downscale_delay_s, state)


def _stabilize(
    direction: Direction, proposal: int, snapshot: Snapshot, delay_s: float, state: PolicyState
) -> tuple[int, PolicyState]:
    """Hold the current count until proposals in one direction have lasted ``delay_s``."""
    now = snapshot.now_s
    if state.direction == direction:
        since_s = state.since_s
        window = (*(e for e in state.window if e[0] >= now - delay_s), (now, proposal))
    else:
        since_s, window = now, ((now, proposal),)
    current = snapshot.current
    if now - since_s < delay_s:
        return current, PolicyState(direction, since_s, window)
    proposals = [p for _, p in window]
    # The fleet may have changed under the window (a crash, an idle exit): never
    # turn a pending scale-down into a scale-up, or the reverse.
    up = direction == "up"
    desired = max(min(proposals), current) if up else min(max(proposals), current)
    if desired == proposal:
        return desired, PolicyState()
    # Only part of the way: keep the window so the rest follows as older proposals
    # age out of it, with no fresh delay.
    return desired, PolicyState(direction, since_s, window)
