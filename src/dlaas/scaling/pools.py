"""One worker pool per model: its own queue, launcher and controller.

A worker holds one model, so each model has its own input queue and its own pool, and
the policy scales each pool on that queue's backlog alone, to 0 when it is idle: an idle
model costs no worker. Per-model queues rather than routing on one queue: a worker that
holds model A cannot take B's task from a shared queue without handing it back (every
backend would redeliver it after a visibility timeout, or a worker would spin taking
and returning it), and a queue's own depth is the backlog each pool needs.

The default model keeps the service's queue (``--queue-name``) and its bounds
(``--min-workers``, or ``--workers``); another model's pool is made the first time a
task is routed to it, elastic between 0 and ``--max-workers``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dlaas.queue.base import Queue
from dlaas.scaling.controller import Controller

log = logging.getLogger("dlaas.scaling")


class ModelPools:
    """The pools, by model name; ``make(model)`` builds a model's controller."""

    def __init__(
        self, default: str, make: Callable[[str], Controller], *, shared: bool = False
    ) -> None:
        """``shared``: one pool and one queue for every model (workers a local launcher
        does not start, as on EC2: each loads the models its tasks name)."""
        self.default = default
        self.shared = shared
        self._make = make
        self._lock = threading.Lock()
        self._pools: dict[str, Controller] = {default: make(default)}
        self._stop: threading.Event | None = None
        self._threads: list[threading.Thread] = []

    @property
    def default_pool(self) -> Controller:
        return self._pools[self.default]

    def pool(self, model: str | None) -> Controller:
        """The model's pool, made (and started, if the pools run) on first use."""
        name = self.default if self.shared or model is None else model
        with self._lock:
            found = self._pools.get(name)
            if found is None:
                found = self._pools[name] = self._make(name)
                log.info("model_pool_created", extra={"model": name})
                if self._stop is not None:
                    self._start(name, found, self._stop)
            return found

    def queue_for(self, model: str | None) -> Queue:
        """Where a task for ``model`` goes: its pool's queue."""
        return self.pool(model).queue

    def run(self, stop: threading.Event) -> None:
        """Run every pool's controller loop until ``stop``; pools made later start too."""
        with self._lock:
            self._stop = stop
            for name, controller in self._pools.items():
                self._start(name, controller, stop)
        stop.wait()
        for thread in list(self._threads):
            thread.join(timeout=10)

    def _start(self, name: str, controller: Controller, stop: threading.Event) -> None:
        thread = threading.Thread(
            target=controller.run, args=(stop,), name=f"controller-{name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def wake(self, model: str | None = None) -> None:
        """A task for ``model`` was enqueued: its pool's next round runs now if idle."""
        self.pool(model).wake()

    def readiness(self) -> str:
        return self.default_pool.launcher.readiness()

    def stats(self) -> dict[str, Any]:
        """``GET /v1/stats``: the default pool's history and policy, the queue and worker
        counts summed over every pool, and each model's own under ``models``."""
        with self._lock:
            pools = dict(self._pools)
        body = self.default_pool.stats()
        per_model = {name: pool.stats() for name, pool in pools.items()}
        for part in ("queue", "workers"):
            totals: dict[str, Any] = {}
            for stats in per_model.values():
                for key, value in stats[part].items():
                    if key == "oldest_age_s":
                        totals[key] = max(totals.get(key, 0.0), value)
                    else:
                        totals[key] = totals.get(key, 0) + value
            body[part] = totals
        body["models"] = {
            name: {"queue": stats["queue"], "workers": stats["workers"]}
            for name, stats in per_model.items()
        }
        return body

    def close(self) -> None:
        """Stop every pool's workers (drained first) and fork server."""
        with self._lock:
            pools = list(self._pools.items())
        for name, controller in pools:
            controller.launcher.close()
            if name != self.default:
                controller.queue.close()
