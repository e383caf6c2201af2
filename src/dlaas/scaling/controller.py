"""The controller: read the queue and the fleet, apply the policy, call the launcher.

``step()`` does one round and never sleeps, so the simulator can drive it with a
simulated clock; ``run(stop)`` calls it every ``interval_s`` in a thread. Each round
logs one line with its inputs, the desired count and the action, and adds one point to
a short history that ``GET /v1/stats`` and the web page show.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dlaas.queue.base import Queue
from dlaas.scaling.launchers.base import Launcher, WorkerInfo, WorkerState
from dlaas.scaling.policy import PolicyConfig, PolicyState, Snapshot, decide

log = logging.getLogger("dlaas.scaling")

MAX_LAUNCH_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Decision:
    """One round: what the controller saw, what it wanted, and what it did."""

    time_s: float
    visible: int
    in_flight: int
    oldest_age_s: float
    dead_lettered: int
    running: int
    starting: int
    draining: int
    desired: int
    launched: tuple[str, ...] = ()
    drained: tuple[str, ...] = ()
    pending: str | None = None  # e.g. "down to 1": a change waiting out its delay
    pending_for_s: float = 0.0
    held_back: int = 0  # launches skipped because new workers keep failing to start
    drained_starting: int = 0  # of ``drained``, those that were still starting

    @property
    def action(self) -> str:
        if self.launched:
            return f"launch {len(self.launched)}"
        if self.drained:
            return f"drain {len(self.drained)}"
        if self.held_back:
            return f"hold {self.held_back} (start-up failures)"
        return "none"

    def fleet_after(self) -> dict[str, int]:
        """The fleet as this round left it: what it launched is starting, what it drained is
        draining. ``running``/``starting``/``draining`` are what the round saw before acting,
        so reading them alone, a worker launched from zero stayed invisible for a round."""
        drained_running = len(self.drained) - self.drained_starting
        return {
            "desired": self.desired,
            "running": self.running - drained_running,
            "starting": self.starting + len(self.launched) - self.drained_starting,
            "draining": self.draining + len(self.drained),
        }

    def point(self) -> dict[str, Any]:
        """The history entry: JSON-ready numbers only."""
        return {
            "time": self.time_s,
            "visible": self.visible,
            "in_flight": self.in_flight,
            "running": self.running,
            "starting": self.starting,
            "draining": self.draining,
            "desired": self.desired,
        }


class Controller:
    """Keeps ``running + starting`` at what the policy wants.

    Scale-out is ``launcher.launch``; scale-in is only ``launcher.drain`` (a worker
    finishes the batch in hand) or a worker's own idle exit, so no message is lost.
    """

    def __init__(
        self,
        queue: Queue,
        launcher: Launcher,
        config: PolicyConfig,
        *,
        interval_s: float = 1.0,
        history_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.launcher = launcher
        self.config = config
        self.interval_s = interval_s
        self.history_s = history_s
        self.clock = clock
        self._state = PolicyState()
        self._history: deque[dict[str, Any]] = deque()
        self._last: Decision | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # Start-up failure tracking: workers seen STARTING that vanished without being
        # drained. Relaunching them every round would only spin, so launches back off.
        self._last_seen: dict[str, WorkerState] = {}
        self._drained: set[str] = set()
        self._start_failures = 0
        self._launch_not_before_s = -math.inf

    @property
    def mode(self) -> str:
        return "fixed" if self.config.min_workers == self.config.max_workers else "elastic"

    # One round ------------------------------------------------------------------

    def step(self) -> Decision:
        """Read, decide, act, record. Errors from the queue or launcher propagate."""
        now = self.clock()
        queue_stats = self.queue.stats()
        workers = self.launcher.list()
        self._track_start_failures(workers, now)
        running = sum(w.state == WorkerState.RUNNING for w in workers)
        starting = sum(w.state == WorkerState.STARTING for w in workers)
        draining = sum(w.state == WorkerState.DRAINING for w in workers)
        snapshot = Snapshot(
            now_s=now,
            visible=queue_stats.visible,
            in_flight=queue_stats.in_flight,
            oldest_age_s=queue_stats.oldest_age_s,
            running=running,
            starting=starting,
        )
        desired, self._state = decide(snapshot, self.config, self._state)

        current = running + starting
        launched: list[str] = []
        drained: list[str] = []
        drained_starting = 0
        held_back = 0
        if desired > current:
            if now >= self._launch_not_before_s:
                launched = self.launcher.launch(desired - current)
                # Seen from now on, so one that dies before the next round still counts.
                self._last_seen.update(dict.fromkeys(launched, WorkerState.STARTING))
            else:
                held_back = desired - current
        elif desired < current:
            drained = pick_drain(workers, current - desired)
            self.launcher.drain(drained)
            self._drained.update(drained)
            drained_starting = sum(
                w.state == WorkerState.STARTING and w.id in drained for w in workers
            )

        decision = Decision(
            time_s=now,
            visible=queue_stats.visible,
            in_flight=queue_stats.in_flight,
            oldest_age_s=queue_stats.oldest_age_s,
            dead_lettered=queue_stats.dead_lettered,
            running=running,
            starting=starting,
            draining=draining,
            desired=desired,
            launched=tuple(launched),
            drained=tuple(drained),
            pending=self._describe_pending(),
            pending_for_s=now - self._state.since_s if self._state.direction else 0.0,
            held_back=held_back,
            drained_starting=drained_starting,
        )
        self._record(decision)
        return decision

    def _describe_pending(self) -> str | None:
        state = self._state
        return None if state.direction is None else f"{state.direction} to {state.target}"

    def _track_start_failures(self, workers: Sequence[WorkerInfo], now: float) -> None:
        seen = {w.id: w.state for w in workers}
        for worker_id, state in self._last_seen.items():
            if worker_id in seen or worker_id in self._drained:
                continue
            if state == WorkerState.STARTING:
                self._start_failures += 1
                backoff_s = min(MAX_LAUNCH_BACKOFF_S, self.interval_s * 2**self._start_failures)
                self._launch_not_before_s = now + backoff_s
                log.warning(
                    "worker_start_failed",
                    extra={
                        "worker_id": worker_id,
                        "failures": self._start_failures,
                        "next_launch_in_s": round(backoff_s, 1),
                    },
                )
        newly_running = any(
            state == WorkerState.RUNNING and self._last_seen.get(worker_id) != WorkerState.RUNNING
            for worker_id, state in seen.items()
        )
        if newly_running and self._start_failures:
            self._start_failures = 0
            self._launch_not_before_s = -math.inf
        self._drained &= seen.keys()
        self._last_seen = seen

    def _record(self, decision: Decision) -> None:
        with self._lock:
            previous = self._last
            self._last = decision
            self._history.append(decision.point())
            horizon = decision.time_s - self.history_s
            while self._history and self._history[0]["time"] < horizon:
                self._history.popleft()
        # One line per decision; rounds where nothing moved go to debug so an idle
        # service does not log every second.
        quiet = decision.action == "none" and previous is not None and _same(previous, decision)
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "scale_decision",
            extra={
                "visible": decision.visible,
                "in_flight": decision.in_flight,
                "oldest_age_s": round(decision.oldest_age_s, 3),
                "running": decision.running,
                "starting": decision.starting,
                "draining": decision.draining,
                "desired": decision.desired,
                "action": decision.action,
                "pending": decision.pending,
                "pending_for_s": round(decision.pending_for_s, 1),
                "launched": list(decision.launched),
                "drained": list(decision.drained),
            },
        )

    # The loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Call ``step`` every ``interval_s`` until ``stop`` is set; never dies on errors."""
        log.info(
            "controller_started",
            extra={"mode": self.mode, "interval_s": self.interval_s, **_config_fields(self.config)},
        )
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.step()
            except Exception:  # a supervisor loop: log, then try again next round
                log.exception("scale_step_failed")
            self._sleep_until(started + self.interval_s, stop)
        log.info("controller_stopped")

    def wake(self) -> None:
        """Run the next round now if the fleet is meant to be empty: a job on an idle service.

        With workers up, the regular round is soon enough, and a round per request would
        cost the web process a queue read and a launcher refresh for every image.
        """
        last = self._last
        if last is None or last.desired == 0:
            self._wake.set()

    def _sleep_until(self, deadline: float, stop: threading.Event) -> None:
        # Two events cannot be awaited together; short slices keep stop and wake prompt.
        while not stop.is_set() and not self._wake.is_set():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            stop.wait(min(remaining_s, 0.05))
        self._wake.clear()

    # What the web tier shows ------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._history)

    def last_decision(self) -> Decision | None:
        with self._lock:
            return self._last

    def stats(self) -> dict[str, Any]:
        """The body of ``GET /v1/stats``: queue, workers, recent history and mode."""
        with self._lock:
            last = self._last
            history = list(self._history)
        queue: dict[str, Any] = {
            "visible": last.visible if last else 0,
            "in_flight": last.in_flight if last else 0,
            "oldest_age_s": last.oldest_age_s if last else 0.0,
            "dead_lettered": last.dead_lettered if last else 0,
        }
        workers = (
            last.fleet_after()
            if last
            else {"desired": 0, "running": 0, "starting": 0, "draining": 0}
        )
        return {
            "queue": queue,
            "workers": workers,
            "history": history,
            "mode": self.mode,
            "updated_at": last.time_s if last else None,
            "policy": _config_fields(self.config),
        }


def pick_drain(workers: Sequence[WorkerInfo], surplus: int) -> list[str]:
    """Choose at most ``surplus`` workers to drain: idle ones first, newest first.

    Draining workers are never picked again. Idle (or unknown) workers cost nothing to
    stop; the newest have warmed up least. A busy worker is picked only when there are
    not enough idle ones, and even then it finishes its batch before exiting.
    """
    candidates = [w for w in workers if w.state != WorkerState.DRAINING]
    candidates.sort(key=lambda w: (w.busy is True, -w.started_at, w.id))
    return [w.id for w in candidates[: max(0, surplus)]]


def _same(a: Decision, b: Decision) -> bool:
    keys = ("visible", "in_flight", "running", "starting", "draining", "desired", "pending")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _config_fields(config: PolicyConfig) -> dict[str, Any]:
    return {
        "target_backlog_per_worker": config.target_backlog_per_worker,
        "min_workers": config.min_workers,
        "max_workers": config.max_workers,
        "upscale_delay_s": config.upscale_delay_s,
        "downscale_delay_s": config.downscale_delay_s,
        "max_message_age_s": config.max_message_age_s,
    }
