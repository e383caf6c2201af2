"""The event loop: one fleet serving one job, in simulated time.

It runs the *same* ``Controller`` and policy as the service, with a simulated clock,
a ``SimQueue`` and a ``MemoryLauncher`` whose pretend workers boot in ``boot_s``, serve
a batch of ``n`` in ``per_batch_s + per_image_s * n`` and exit after ``idle_timeout_s``
without messages or when drained. With ``cores`` set, busy workers share that many CPUs
(processor sharing), which is how one machine runs several local workers.
"""

from __future__ import annotations

import builtins
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from dlaas.errors import ConfigError, ScalingError
from dlaas.scaling.controller import Controller
from dlaas.scaling.launchers.memory import MemoryLauncher
from dlaas.scaling.policy import PolicyConfig
from dlaas.scaling.sim.params import SimParams
from dlaas.scaling.sim.queue import SimQueue
from dlaas.scaling.sim.report import ModeReport, RunReport

_EPS = 1e-9

# Simulated workers never crash, so a message they hold never comes back.
HELD_S = 1e12


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
