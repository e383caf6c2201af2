"""The worker's own settings group, built once from ``Settings`` and passed down whole."""

from __future__ import annotations

from dataclasses import dataclass

from dlaas.defaults import BATCH_SIZE
from dlaas.settings import Settings


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker batches, waits and exits; units in the names.

    ``receive_wait_s`` is one long-poll (never longer than ``idle_timeout_s``);
    ``parent_pid``, when set, is a process whose exit makes this worker leave;
    ``keep_inputs`` leaves each uploaded image in storage after its result.
    """

    batch_size: int = BATCH_SIZE
    max_batch_delay_ms: float = 10.0
    idle_timeout_s: float = 30.0
    visibility_timeout_s: float = 30.0
    receive_wait_s: float = 1.0
    drain_check_interval_s: float = 1.0
    top_k: int = 5
    parent_pid: int | None = None
    keep_inputs: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerOptions:
        return cls(
            batch_size=settings.batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            idle_timeout_s=settings.idle_timeout_s,
            visibility_timeout_s=settings.visibility_timeout_s,
            parent_pid=settings.parent_pid,
            keep_inputs=settings.keep_inputs,
        )
