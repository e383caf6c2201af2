"""A launcher with no processes: workers are records that tests and the simulator move.

``launch`` adds STARTING workers and ``drain`` marks them DRAINING; whoever drives the
launcher (a test, or the simulator's event loop) then calls ``set_running``,
``set_busy`` and ``remove`` as the pretend workers boot, work and exit.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from dlaas.errors import ScalingError
from dlaas.scaling.launchers.base import Launcher, WorkerInfo, WorkerState


@dataclass(frozen=True)
class LaunchEvent:
    """One call the controller made, for tests that check what it asked for."""

    time_s: float
    action: str  # "launch" or "drain"
    worker_ids: tuple[str, ...]


class MemoryLauncher(Launcher):
    def __init__(self, *, clock: Callable[[], float] = time.time, prefix: str = "mem") -> None:
        self.clock = clock
        self.prefix = prefix
        self.events: list[LaunchEvent] = []
        self.exit_codes: Counter[int] = Counter()
        self._workers: dict[str, WorkerInfo] = {}
        self._seq = 0
        self._lock = threading.Lock()

    # The Launcher interface ---------------------------------------------------

    def list(self) -> list[WorkerInfo]:
        with self._lock:
            return list(self._workers.values())

    def _launch(self, n: int) -> builtins.list[str]:
        now = self.clock()
        ids = []
        with self._lock:
            for _ in range(n):
                self._seq += 1
                worker_id = f"{self.prefix}-{self._seq}"
                self._workers[worker_id] = WorkerInfo(worker_id, WorkerState.STARTING, now)
                ids.append(worker_id)
        self.events.append(LaunchEvent(now, "launch", tuple(ids)))
        return ids

    def drain(self, worker_ids: Sequence[str]) -> None:
        """Mark workers DRAINING; one that already exited is skipped (it is gone anyway)."""
        with self._lock:
            for worker_id in worker_ids:
                info = self._workers.get(worker_id)
                if info is not None:
                    self._workers[worker_id] = replace(info, state=WorkerState.DRAINING)
        self.events.append(LaunchEvent(self.clock(), "drain", tuple(worker_ids)))

    # What the driver of the pretend workers calls -----------------------------

    def get(self, worker_id: str) -> WorkerInfo:
        with self._lock:
            return self._get(worker_id)

    def set_running(self, worker_id: str, *, busy: bool | None = False) -> None:
        """The worker has booted and takes messages (a draining one stays draining)."""
        with self._lock:
            info = self._get(worker_id)
            state = (
                WorkerState.DRAINING if info.state == WorkerState.DRAINING else WorkerState.RUNNING
            )
            self._workers[worker_id] = replace(info, state=state, busy=busy)

    def set_busy(self, worker_id: str, busy: bool | None) -> None:
        with self._lock:
            self._workers[worker_id] = replace(self._get(worker_id), busy=busy)

    def remove(self, worker_id: str, exit_code: int = 0) -> None:
        """The worker exited (idle exit, drained, or crashed with a non-zero code)."""
        with self._lock:
            self._get(worker_id)
            del self._workers[worker_id]
        self.exit_codes[exit_code] += 1

    @property
    def crash_count(self) -> int:
        return sum(n for code, n in self.exit_codes.items() if code != 0)

    def _get(self, worker_id: str) -> WorkerInfo:
        try:
            return self._workers[worker_id]
        except KeyError:
            raise ScalingError(f"no worker {worker_id!r} in this launcher") from None
