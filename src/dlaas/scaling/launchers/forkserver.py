"""A warm interpreter to fork local workers from, for ``LocalLauncher(fork_entry=...)``.

The fork server has already imported dlaas, NumPy, Pillow and ONNX Runtime, and loaded
the workers' model (``dlaas.worker.preload``), so a new worker starts in about the time
a ``fork`` takes instead of paying every import again: scale-from-zero latency drops
from ~0.5 s to ~0.1 s. It holds no queue and takes no messages; each child it forks
runs the launcher's ``fork_entry`` (``dlaas.assemble.worker_main``), configured by its
``DLAAS_*`` environment.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from multiprocessing.process import BaseProcess

from dlaas.defaults import FORKSERVER_PRELOAD_ENV as PRELOAD_ENV
from dlaas.errors import ScalingError

log = logging.getLogger("dlaas.scaling")

# What a worker imports before it can load its model; the fork server imports it once.
PRELOAD_MODULES = [
    "numpy",
    "onnxruntime",
    "PIL.Image",
    "PIL.JpegImagePlugin",
    "PIL.PngImagePlugin",
    "dlaas.settings",
    "dlaas.model",
    "dlaas.worker",
    "dlaas.storage",
    "dlaas.storage.local",
    "dlaas.queue",
    "dlaas.queue.sqlite",
    "dlaas.worker.preload",  # last: loads and warms the model (see that module)
]


class Forked:
    """A worker forked from the fork server, behind the part of Popen's interface we use."""

    def __init__(self, process: BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return int(self._process.pid or 0)

    def poll(self) -> int | None:
        return None if self._process.is_alive() else self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self._process.kill()


def _run_worker(entry: Callable[[], int], env: dict[str, str], cwd: str | None) -> None:
    """The forked child: take the worker's environment, leave the parent's session, run."""
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    os.setsid()  # as start_new_session: Ctrl-C reaches the parent, which drains us
    sys.exit(entry())


def _noop() -> None:
    """The fork server's readiness probe: a child that exits at once."""


_START_LOCK = threading.Lock()


def _start_once(env: Mapping[str, str]) -> None:
    """Start this process's fork server, if it is not running, with ``env``.

    Python keeps one per process: a second launcher (a second model's pool) forks from
    the same one, warm in its imports, and its workers load their own model. The lock
    keeps two launchers made at once from interleaving the environment swap.
    """
    from multiprocessing import forkserver

    with _START_LOCK:
        # The fork server inherits this process's environment when it starts: give it
        # the workers' settings for that moment.
        saved = dict(os.environ)
        os.environ.update({**env, PRELOAD_ENV: "1"})
        try:
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)


class ForkServer:
    """Starts the fork server at once, in the background, and forks workers from it."""

    def __init__(self, entry: Callable[[], int], env: Mapping[str, str]) -> None:
        """``entry``: what a forked worker runs (a module-level function, which the fork
        server imports up front); ``env``: the workers' settings, so the fork server
        preloads the model they use."""
        self._entry = entry
        self._warm = threading.Event()
        # The fork server's NumPy must not start BLAS threads that a fork would orphan.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self._context = multiprocessing.get_context("forkserver")
        *imports, last = PRELOAD_MODULES
        self._context.set_forkserver_preload([*imports, entry.__module__, last])
        _start_once(env)
        threading.Thread(target=self._await_warm, name="forkserver-warm", daemon=True).start()

    @property
    def warm(self) -> bool:
        """Whether the fork server has finished its imports and its model."""
        return self._warm.is_set()

    def fork(self, name: str, env: Mapping[str, str], cwd: str | None) -> Forked:
        """Fork a worker that runs with ``env`` added to the fork server's environment."""
        process = self._context.Process(
            target=_run_worker, args=(self._entry, dict(env), cwd), name=name, daemon=False
        )
        try:
            process.start()
        except OSError as exc:
            raise ScalingError(f"cannot fork a worker from the fork server: {exc}") from exc
        return Forked(process)

    def _await_warm(self) -> None:
        """Fork one no-op child: the fork server answers only once its preload is done."""
        try:
            probe = self._context.Process(target=_noop, name="dlaas-forkserver-probe")
            probe.start()
            probe.join()
        except OSError as exc:
            log.warning("forkserver_probe_failed", extra={"error": str(exc)})
        self._warm.set()
