"""``dlaas simulate``: the autoscaler at cloud scale, in simulated time.

A discrete-event simulation that runs the *same* ``Controller`` and policy as the
service, with a simulated clock, a simulated queue (``SimQueue``, SQS semantics) and a
``MemoryLauncher`` whose pretend workers boot in ``boot_s``, serve a batch of ``n`` in
``per_batch_s + per_image_s * n`` and exit after ``idle_timeout_s`` without messages or
when drained. With ``cores`` set, busy workers share that many CPUs (processor
sharing), which is how one machine runs several local workers.

Every run compares a *fixed* fleet with the *elastic* one and reports what
``bench/elastic.py`` measures on the real service: wall time to the last result,
worker-seconds, peak workers and seconds from the last result until 0 workers.
The presets and their calibration are described in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import builtins
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dlaas.defaults import BATCH_SIZE, TARGET_BACKLOG_PER_WORKER
from dlaas.errors import ConfigError, ReceiptInvalid, ScalingError
from dlaas.queue.base import DEFAULT_MAX_RECEIVES, Message, Queue, QueueStats
from dlaas.scaling.controller import Controller
from dlaas.scaling.launchers.memory import MemoryLauncher
from dlaas.scaling.policy import PolicyConfig, cpu_count

# The seed's published figures, in minutes: {images: {mode: minutes}}.
SEED_MINUTES: dict[int, dict[str, float]] = {
    10: {"fixed": 6.0, "elastic": 4.0},
    30: {"fixed": 11.0, "elastic": 5.0},
}

_EPS = 1e-9


# Parameters ---------------------------------------------------------------------


# Simulated workers never crash, so a message they hold never comes back.
HELD_S = 1e12


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

    def elastic_config(self) -> PolicyConfig:
        return PolicyConfig(
            target_backlog_per_worker=self.target,
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            upscale_delay_s=self.upscale_delay_s,
            downscale_delay_s=self.downscale_delay_s,
            max_message_age_s=self.max_message_age_s,
        )

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


# Results ------------------------------------------------------------------------


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


# The simulated queue ----------------------------------------------------------


@dataclass
class _Stored:
    id: str
    body: str
    sent_at: float
    receive_count: int = 0
    receipt: str = ""
    invisible_until: float = 0.0


class SimQueue(Queue):
    """An in-process queue on a simulated clock, with SQS semantics.

    ``receive`` never waits (there is no real time to wait in): the event loop calls
    it when a worker is free. Hidden messages come back when their visibility timeout
    passes, and one received more than ``max_receives`` times is dead-lettered.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        name: str = "sim",
        max_receives: int = DEFAULT_MAX_RECEIVES,
    ) -> None:
        self.clock = clock
        self.name = name
        self.url = f"sim://{name}"
        self.max_receives = max_receives
        self.dead_lettered = 0
        self._ids = itertools.count(1)
        self._visible: deque[_Stored] = deque()
        self._in_flight: dict[str, _Stored] = {}
        self._expiry: list[tuple[float, str]] = []  # (invisible_until, receipt), lazy
        self._siblings: dict[str, SimQueue] = {name: self}

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        now = self.clock()
        stored = [_Stored(f"m{next(self._ids)}", body, now) for body in bodies]
        self._visible.extend(stored)
        return [m.id for m in stored]

    def _receive(
        self, max_messages: int, wait_time_s: float, visibility_timeout_s: float
    ) -> list[Message]:
        now = self.clock()  # a simulated queue never waits: the clock moves only by events
        self._expire(now)
        out: list[Message] = []
        while self._visible and len(out) < max_messages:
            m = self._visible.popleft()
            m.receive_count += 1
            if m.receive_count > self.max_receives:
                self.dead_lettered += 1
                continue
            m.receipt = f"{m.id}:{m.receive_count}"
            m.invisible_until = now + visibility_timeout_s
            self._in_flight[m.receipt] = m
            heapq.heappush(self._expiry, (m.invisible_until, m.receipt))
            out.append(Message(m.id, m.body, m.receipt, m.receive_count, m.sent_at))
        return out

    def delete(self, receipt: str) -> None:
        self._in_flight.pop(receipt, None)

    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        m = self._in_flight.get(receipt)
        if m is None:
            raise ReceiptInvalid(f"receipt {receipt!r} is stale")
        m.invisible_until = self.clock() + visibility_timeout_s
        heapq.heappush(self._expiry, (m.invisible_until, receipt))

    def stats(self) -> QueueStats:
        now = self.clock()
        self._expire(now)
        # The visible deque is in arrival order (expired messages go back to its
        # front), so its head is the oldest visible message.
        oldest = self._visible[0].sent_at if self._visible else now
        for m in self._in_flight.values():
            oldest = min(oldest, m.sent_at)
        return QueueStats(
            visible=len(self._visible),
            in_flight=len(self._in_flight),
            oldest_age_s=now - oldest,
            dead_lettered=self.dead_lettered,
        )

    def sibling(self, name: str) -> SimQueue:
        if name not in self._siblings:
            queue = SimQueue(self.clock, name, self.max_receives)
            queue._siblings = self._siblings
            self._siblings[name] = queue
        return self._siblings[name]

    def purge(self) -> None:
        self._visible.clear()
        self._in_flight.clear()
        self._expiry.clear()

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, receipt = heapq.heappop(self._expiry)
            m = self._in_flight.get(receipt)
            if m is not None and m.invisible_until <= now:
                del self._in_flight[receipt]
                self._visible.appendleft(m)

    @property
    def visible_count(self) -> int:
        """Messages ready for a worker now, without the cost of a full ``stats``."""
        self._expire(self.clock())
        return len(self._visible)


# The simulation ---------------------------------------------------------------


@dataclass
class _Batch:
    receipts: list[str]
    done_v: float  # the virtual time at which this batch completes


class _SimLauncher(MemoryLauncher):
    """A MemoryLauncher that tells the simulation about the controller's calls."""

    def __init__(self, sim: _Simulation) -> None:
        super().__init__(clock=sim.clock, prefix="sim")
        self.sim = sim

    def _launch(self, n: int) -> builtins.list[str]:
        ids = super()._launch(n)
        for worker_id in ids:
            self.sim.on_launch(worker_id)
        return ids

    def drain(self, worker_ids: Sequence[str]) -> None:
        super().drain(worker_ids)
        for worker_id in worker_ids:
            self.sim.on_drain(worker_id)


class _Simulation:
    """One fleet serving one job. Each worker is starting, idle or busy.

    Processor sharing without per-event rescheduling: every busy worker runs at the
    same speed, so a batch's completion is fixed in *virtual* time (work done at full
    speed), and the heap ordered by it never needs reordering when the speed changes.
    """

    def __init__(
        self, params: SimParams, config: PolicyConfig, *, mode: str, warm_workers: int
    ) -> None:
        self.params = params
        self.config = config
        self.mode = mode
        self.idle_timeout_s = math.inf if warm_workers else params.idle_timeout_s
        self.warm_workers = warm_workers
        self.now = 0.0
        self.vnow = 0.0
        self.queue = SimQueue(self.clock)
        self.launcher = _SimLauncher(self)
        self.controller = Controller(
            self.queue,
            self.launcher,
            config,
            interval_s=params.scale_interval_s,
            history_s=math.inf,
            clock=self.clock,
        )
        self.starting: dict[str, float] = {}  # worker -> ready at
        self.ready_heap: list[tuple[float, str]] = []
        self.idle: dict[str, float] = {}  # worker -> idle since (insertion order: longest first)
        self.busy: dict[str, _Batch] = {}
        self.busy_heap: list[tuple[float, str]] = []
        self.leaving: set[str] = set()  # drained while busy: exits after the batch
        self.arrived = 0
        self.done = 0
        self.last_result_s: float | None = None
        self.zero_at_s: float | None = None
        self.worker_s = 0.0
        self.peak = 0

    def clock(self) -> float:
        return self.now

    @property
    def live(self) -> int:
        return len(self.starting) + len(self.idle) + len(self.busy)

    @property
    def speed(self) -> float:
        cores, busy = self.params.cores, len(self.busy)
        return 1.0 if cores is None or busy <= cores else cores / busy

    # Callbacks from the launcher --------------------------------------------------

    def on_launch(self, worker_id: str) -> None:
        ready_at = self.now + self.params.boot_s
        self.starting[worker_id] = ready_at
        heapq.heappush(self.ready_heap, (ready_at, worker_id))

    def on_drain(self, worker_id: str) -> None:
        """SIGTERM: a starting or idle worker exits now, a busy one after its batch."""
        if (
            self.starting.pop(worker_id, None) is not None
            or self.idle.pop(worker_id, None) is not None
        ):
            self.launcher.remove(worker_id)
        elif worker_id in self.busy:
            self.leaving.add(worker_id)

    # The event loop ---------------------------------------------------------------

    def run(self) -> ModeReport:
        p = self.params
        for worker_id in self.launcher.launch(self.warm_workers):
            del self.starting[worker_id]  # already up when the job arrives
            self.idle[worker_id] = self.now
            self.launcher.set_running(worker_id, busy=False)
        if p.arrival_rate is None:
            self._send(p.images)
        ticks = 0
        while True:
            self._arrive()
            self._complete()
            self._boot()
            self._dispatch()
            self._idle_exits()
            if self.now + _EPS >= ticks * p.scale_interval_s:
                self.controller.step()
                ticks += 1
                self._dispatch()
            self.peak = max(self.peak, self.live)
            if self.done == p.images and self.live == 0 and self.zero_at_s is None:
                self.zero_at_s = self.now
            if self._finished():
                break
            next_s = self._next_event(ticks * p.scale_interval_s)
            if next_s > p.max_sim_s:
                raise ScalingError(
                    f"the {self.mode} simulation ran past {p.max_sim_s:.0f} simulated seconds "
                    f"with {p.images - self.done} images left; raise --max-workers or the rates"
                )
            self._advance(next_s)
        last = self.last_result_s or 0.0
        return ModeReport(
            mode=self.mode,
            images=p.images,
            results=self.done,
            wall_s=last + p.latency_s,
            worker_s=self.worker_s,
            peak_workers=self.peak,
            to_zero_s=None if self.zero_at_s is None else self.zero_at_s - last,
            timeline=self.controller.history(),
        )

    def _finished(self) -> bool:
        all_done = self.done == self.params.images
        return all_done and (self.live == 0 or self.config.min_workers > 0)

    def _send(self, n: int) -> None:
        self.queue.send_batch([str(i) for i in range(self.arrived, self.arrived + n)])
        self.arrived += n

    def _next_arrival_s(self) -> float:
        rate = self.params.arrival_rate
        if rate is None or self.arrived >= self.params.images:
            return math.inf
        return self.arrived / rate

    def _arrive(self) -> None:
        due = 0
        while self._next_arrival_s() <= self.now + _EPS:
            due += 1
            self.arrived += 1
        if due:
            self.arrived -= due
            self._send(due)

    def _complete(self) -> None:
        while self.busy_heap and self.busy_heap[0][0] <= self.vnow + _EPS:
            _, worker_id = heapq.heappop(self.busy_heap)
            batch = self.busy.pop(worker_id)
            for receipt in batch.receipts:
                self.queue.delete(receipt)
            self.done += len(batch.receipts)
            self.last_result_s = self.now
            if worker_id in self.leaving:
                self.leaving.discard(worker_id)
                self.launcher.remove(worker_id)
            else:
                self.idle[worker_id] = self.now
                self.launcher.set_busy(worker_id, False)

    def _boot(self) -> None:
        while self.ready_heap and self.ready_heap[0][0] <= self.now + _EPS:
            ready_at, worker_id = heapq.heappop(self.ready_heap)
            if self.starting.get(worker_id) == ready_at:
                del self.starting[worker_id]
                self.idle[worker_id] = self.now
                self.launcher.set_running(worker_id, busy=False)

    def _dispatch(self) -> None:
        p = self.params
        for worker_id in list(self.idle):
            if self.queue.visible_count == 0:
                return
            messages = self.queue.receive(p.batch_size, visibility_timeout_s=HELD_S)
            if not messages:
                return  # all dead-lettered
            del self.idle[worker_id]
            n = len(messages)
            # A short batch goes at once (adaptive batching): nothing else was visible.
            work_s = p.per_batch_s + p.per_image_s * n
            batch = _Batch([m.receipt for m in messages], self.vnow + work_s)
            self.busy[worker_id] = batch
            heapq.heappush(self.busy_heap, (batch.done_v, worker_id))
            self.launcher.set_busy(worker_id, True)

    def _idle_exits(self) -> None:
        if math.isinf(self.idle_timeout_s):
            return
        for worker_id, since in list(self.idle.items()):
            if self.now - since + _EPS >= self.idle_timeout_s:
                del self.idle[worker_id]
                self.launcher.remove(worker_id)

    def _next_event(self, next_tick_s: float) -> float:
        candidates = [next_tick_s, self._next_arrival_s()]
        while self.ready_heap and self.starting.get(self.ready_heap[0][1]) != self.ready_heap[0][0]:
            heapq.heappop(self.ready_heap)  # drained while starting
        if self.ready_heap:
            candidates.append(self.ready_heap[0][0])
        if self.busy_heap:
            candidates.append(self.now + (self.busy_heap[0][0] - self.vnow) / self.speed)
        if self.idle and not math.isinf(self.idle_timeout_s):
            candidates.append(min(self.idle.values()) + self.idle_timeout_s)
        return max(self.now, min(candidates))

    def _advance(self, t: float) -> None:
        dt = t - self.now
        self.worker_s += self.live * dt
        self.vnow += dt * self.speed
        self.now = t


def simulate_mode(params: SimParams, mode: str) -> ModeReport:
    """Run one fleet ("fixed" or "elastic") through ``params.images`` images."""
    if mode == "fixed":
        warm = params.fixed_workers if params.fixed_warm else 0
        sim = _Simulation(params, params.fixed_config(), mode=mode, warm_workers=warm)
    elif mode == "elastic":
        if params.images and params.max_workers < 1:
            raise ConfigError("max_workers is 0, so no image would ever be served; raise it")
        sim = _Simulation(params, params.elastic_config(), mode=mode, warm_workers=0)
    else:
        raise ConfigError(f"unknown fleet mode {mode!r}; use 'fixed' or 'elastic'")
    return sim.run()


def simulate(params: SimParams) -> RunReport:
    """The fixed fleet and the elastic one on the same job."""
    return RunReport(params, simulate_mode(params, "fixed"), simulate_mode(params, "elastic"))


# The command line ---------------------------------------------------------------


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
