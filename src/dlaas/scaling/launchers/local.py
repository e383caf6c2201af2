"""Workers as local subprocesses: ``dlaas worker`` on this machine, one per core.

Each child gets its worker ID in ``DLAAS_WORKER_ID`` (the worker's ``--worker-id``).
A child is STARTING until it reports ready, RUNNING after, DRAINING once asked to stop
(SIGTERM: finish the batch in hand, take nothing new, exit 0) or once it reports that
it is leaving on its own. Readiness and busyness come from an optional ``probe``: a
function from a worker ID to the state the worker last reported (``health_probe``
reads the health record every worker keeps in storage). Without a probe a child counts
as RUNNING ``ready_after_s`` after it started, and its busyness is unknown.

With ``fork_entry`` (``dlaas.assemble.worker_main`` in ``dlaas serve``) workers are
forked from a warm fork server (``forkserver``) and run that function: the worker
command is then not used, and the settings travel in ``env`` alone. The entry is
passed in, so the launcher never imports what builds a worker.

Exited children are reaped on every ``list()``. A non-zero exit the launcher did not
cause is a crash: it is logged and counted, and the crashed worker's messages come
back to others through their visibility timeout.
"""

from __future__ import annotations

import builtins
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dlaas.errors import DlaasError, ScalingError
from dlaas.jobs import layout
from dlaas.jobs.records import WorkerHealth
from dlaas.scaling.launchers.base import Launcher, WorkerInfo, WorkerState, reported_health
from dlaas.scaling.launchers.forkserver import Forked, ForkServer
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.scaling")

WORKER_ID_ENV = "DLAAS_WORKER_ID"
WorkerProbe = Callable[[str], WorkerHealth | None]
"""``probe(worker_id)`` -> the state the worker last reported, or None."""

READY_STATES: frozenset[WorkerHealth] = frozenset({"idle", "busy"})


def health_probe(storage: Storage) -> WorkerProbe:
    """A probe that reads ``state`` from the worker's record at ``layout.worker_key``."""

    def probe(worker_id: str) -> WorkerHealth | None:
        try:
            record = storage.get_json(layout.worker_key(worker_id))
        except (DlaasError, ValueError):
            return None  # not written yet (still loading the model) or unreadable
        return reported_health(record)

    return probe


@dataclass
class _Child:
    id: str
    process: subprocess.Popen[bytes] | Forked
    started_at: float
    drain_requested: bool = False
    ready: bool = False


class LocalLauncher(Launcher):
    """Starts ``worker_argv`` as child processes; see the module docstring for states."""

    def __init__(
        self,
        worker_argv: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        probe: WorkerProbe | None = None,
        ready_after_s: float = 0.0,
        stop_timeout_s: float = 30.0,
        fork_entry: Callable[[], int] | None = None,
    ) -> None:
        """``env`` is added to this process's environment for every child.

        ``stop_timeout_s`` bounds how long ``close`` waits for drained children
        before it kills them; make it longer than one batch takes. ``fork_entry``
        forks workers that run it from a warm fork server, instead of ``worker_argv``.
        """
        if not worker_argv and fork_entry is None:
            raise ScalingError("the local launcher needs a worker command; got an empty one")
        self.preload = fork_entry is not None
        self.worker_argv = list(worker_argv)
        self.env = dict(env or {})
        self.cwd = cwd
        self.probe = probe
        self.ready_after_s = ready_after_s
        self.stop_timeout_s = stop_timeout_s
        self.exit_codes: Counter[int] = Counter()
        self.crash_count = 0
        self._prefix = f"local-{secrets.token_hex(3)}"  # IDs never repeat across restarts
        self._seq = 0
        self._children: dict[str, _Child] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._forkserver = None if fork_entry is None else ForkServer(fork_entry, self.env)

    # The Launcher interface ---------------------------------------------------

    def list(self) -> list[WorkerInfo]:
        with self._lock:
            self._reap()
            return [self._info(child) for child in self._children.values()]

    def _launch(self, n: int) -> builtins.list[str]:
        ids = []
        with self._lock:
            if self._closed:
                raise ScalingError("the local launcher is closed; it starts no more workers")
            for _ in range(n):
                self._seq += 1
                worker_id = f"{self._prefix}-{self._seq}"
                child = _Child(worker_id, self._spawn(worker_id), time.time())
                self._children[worker_id] = child
                ids.append(worker_id)
                log.info(
                    "worker_launched", extra={"worker_id": worker_id, "pid": child.process.pid}
                )
        return ids

    def drain(self, worker_ids: Sequence[str]) -> None:
        """SIGTERM each worker once; workers that already exited are skipped."""
        with self._lock:
            for worker_id in worker_ids:
                child = self._children.get(worker_id)
                if child is not None and not child.drain_requested:
                    self._terminate(child)

    def close(self) -> None:
        """Drain every child, wait up to ``stop_timeout_s`` for them, then kill the rest."""
        with self._lock:
            self._closed = True
            for child in self._children.values():
                if not child.drain_requested:
                    self._terminate(child)
            children = list(self._children.values())
        deadline = time.monotonic() + self.stop_timeout_s
        for child in children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker_killed", extra={"worker_id": child.id, "pid": child.process.pid}
                )
                child.process.kill()
                child.process.wait()
        with self._lock:
            self._reap()

    @property
    def pids(self) -> dict[str, int]:
        """Live children's process IDs, by worker ID (for tests and operators)."""
        with self._lock:
            return {worker_id: c.process.pid for worker_id, c in self._children.items()}

    def readiness(self) -> str:
        if self._forkserver is None or self._forkserver.warm:
            return "ok"
        return "the worker fork server is still loading the model"

    # Internals ----------------------------------------------------------------

    def _spawn(self, worker_id: str) -> subprocess.Popen[bytes] | Forked:
        if self._forkserver is not None:
            cwd = None if self.cwd is None else str(self.cwd)
            env = {**self.env, WORKER_ID_ENV: worker_id}
            return self._forkserver.fork(f"dlaas-worker-{worker_id}", env, cwd)
        env = {**os.environ, **self.env, WORKER_ID_ENV: worker_id}
        try:
            # A session of its own: Ctrl-C on the service reaches only the parent,
            # which then drains its workers in order instead of interrupting them.
            return subprocess.Popen(
                self.worker_argv,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise ScalingError(
                f"cannot start worker command {self.worker_argv[0]!r}: {exc}; "
                "check that it exists and is executable"
            ) from exc

    def _terminate(self, child: _Child) -> None:
        child.drain_requested = True
        try:
            child.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return  # exited already; the next reap records it
        log.info("worker_drain", extra={"worker_id": child.id, "pid": child.process.pid})

    def _reap(self) -> None:
        for worker_id, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self._children[worker_id]
            self.exit_codes[code] += 1
            # A drained worker may die of the SIGTERM itself while still loading
            # the model, before its handler is installed: that is no crash either.
            expected = code == 0 or child.drain_requested
            if expected:
                log.info("worker_exited", extra={"worker_id": worker_id, "exit_code": code})
            else:
                self.crash_count += 1
                log.warning(
                    "worker_crashed",
                    extra={
                        "worker_id": worker_id,
                        "exit_code": code,
                        "crashes": self.crash_count,
                        "ran_s": round(time.time() - child.started_at, 1),
                    },
                )

    def _info(self, child: _Child) -> WorkerInfo:
        def info(state: WorkerState, busy: bool | None = None) -> WorkerInfo:
            return WorkerInfo(child.id, state, child.started_at, busy)

        if child.drain_requested:
            return info(WorkerState.DRAINING)
        if self.probe is None:
            if time.time() - child.started_at >= self.ready_after_s:
                return info(WorkerState.RUNNING)
            return info(WorkerState.STARTING)
        try:
            reported = self.probe(child.id)
        except Exception:  # a probe must not take the controller down; treat as unknown
            log.exception("worker_probe_failed", extra={"worker_id": child.id})
            reported = None
        if reported == "stopped":
            return info(WorkerState.DRAINING)  # leaving on its own (idle exit)
        if reported in READY_STATES:
            child.ready = True
            return info(WorkerState.RUNNING, busy=reported == "busy")
        return info(WorkerState.RUNNING if child.ready else WorkerState.STARTING)
