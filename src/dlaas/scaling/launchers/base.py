"""The launcher interface: it makes the controller's desired worker count real.

Launchers never decide how many workers to run (the policy does) and never kill a
busy worker: scale-in is by ``drain`` (finish the batch in hand, then exit) or by the
worker's own idle exit.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import get_args

from dlaas.jobs.records import WorkerHealth

_HEALTH: dict[str, WorkerHealth] = {state: state for state in get_args(WorkerHealth)}


def reported_health(record: object) -> WorkerHealth | None:
    """The ``state`` in a worker's health record, None if it has none. A state this
    version does not know counts as "starting": never ready, never given up on."""
    state = record.get("state") if isinstance(record, dict) else None
    if not isinstance(state, str):
        return None
    return _HEALTH.get(state, "starting")


class WorkerState(StrEnum):
    """The launcher's view of a worker (a worker's own report is ``WorkerHealth``)."""

    STARTING = "starting"  # launched, not yet taking messages (booting, loading the model)
    RUNNING = "running"
    DRAINING = "draining"  # asked to stop; finishing the batch in hand


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    state: WorkerState
    started_at: float  # epoch seconds
    busy: bool | None = None  # None when the launcher cannot tell


class Launcher(ABC):
    """Starts and drains workers; ``list`` is the launcher's view of what is alive."""

    @abstractmethod
    def list(self) -> builtins.list[WorkerInfo]:
        """Workers that are starting, running or draining (not the ones gone)."""

    def launch(self, n: int) -> builtins.list[str]:
        """Start ``n`` more workers; return their IDs."""
        if n < 0:
            raise ValueError(f"cannot launch a negative number of workers ({n})")
        return self._launch(n) if n else []

    @abstractmethod
    def _launch(self, n: int) -> builtins.list[str]:
        """``launch`` for ``n`` >= 1."""

    @abstractmethod
    def drain(self, worker_ids: Sequence[str]) -> None:
        """Ask these workers to finish the batch in hand and exit."""

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Stop tracking; local launchers also drain what they started."""

    def readiness(self) -> str:
        """ "ok" once a launch would start promptly, else what it is waiting for."""
        return "ok"
