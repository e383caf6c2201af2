"""The baselines dlaas is measured against, each started the same way.

- ``bare_loop``: decode + ORT and nothing else, one process per core, one thread each,
  at whichever ORT batch (1 or 8) runs faster on this machine, with its own CPU time;
- ``peer_process``: the FastAPI or the LitServe peer (bench/peer_fastapi.py,
  bench/peer_litserve.py) in a process tree of its own, yielded once it answers.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from common import ROOT  # noqa: F401  (puts src/ on sys.path)

PEER_SCRIPTS = {
    "peer": "peer_fastapi.py",
    "litserve": "peer_litserve.py",
    "minimal": "peer_minimal.py",
}
PEER_READY = {"peer": "/readyz", "litserve": "/health", "minimal": "/readyz"}


@dataclass
class BareRun:
    img_s: float
    cpu_ms_per_image: float  # CPU the loop spent per image (all its processes)
    batch_size: int


def _bare_loop(model_dir: str, images: list[bytes], batch_size: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from dlaas.model import Classifier, ensure_model

    clf = Classifier(ensure_model(Path(model_dir)), intra_op_num_threads=1)
    clf.run_batch_size = batch_size
    clf.predict(np.stack([clf.preprocess(images[0])] * batch_size))  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(images), batch_size):
        arrays = [clf.preprocess(b) for b in images[i : i + batch_size]]
        clf.predict(np.stack(arrays))
    out.put((len(images) / (time.perf_counter() - started), time.process_time() - cpu))


def bare_run(model_dir: Path, images: list[bytes], processes: int, batch_size: int) -> BareRun:
    """``processes`` processes x 1 thread, decode + preprocess + ORT, no I/O."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    share = len(images) // processes
    procs = [
        ctx.Process(
            target=_bare_loop,
            args=(str(model_dir), images[i * share : (i + 1) * share], batch_size, out),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    cpu_ms = 1000 * sum(cpu for _, cpu in results) / (share * processes)
    return BareRun(sum(rate for rate, _ in results), cpu_ms, batch_size)


def bare_best(model_dir: Path, images: list[bytes], processes: int) -> tuple[BareRun, BareRun]:
    """Batch 1 and batch 8, one after the other; (faster, other). The baseline is the
    faster, as anyone tuning a plain loop on this machine would keep it."""
    runs = sorted(
        (bare_run(model_dir, images, processes, b) for b in (1, 8)), key=lambda r: -r.img_s
    )
    return runs[0], runs[1]


@contextmanager
def peer_process(name: str, model_dir: Path, log_path: Path) -> Iterator[tuple[int, int]]:
    """A peer in a process group of its own; yields (pid, port) once it answers.

    The whole group is stopped after: LitServe's inference workers and HTTP servers are
    children of the root, and would otherwise outlive it, spinning on the CPU through
    every later measurement.
    """
    from tests.support import free_port

    port = free_port()
    script = Path(__file__).with_name(PEER_SCRIPTS[name])
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--port", str(port), "--model-dir", str(model_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_until_answering(name, proc, port, log_path)
            yield proc.pid, port
        finally:
            _stop_group(proc)


def _wait_until_answering(name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{port}{PEER_READY[name]}"
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {name} peer did not start:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the peer's whole process group, SIGKILL to what is left after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone of the group still there?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def peer_app(model_dir: Path, log_path: Path) -> Iterator[tuple[int, int]]:
    """The FastAPI peer (bench/latency.py's baseline)."""
    with peer_process("peer", model_dir, log_path) as found:
        yield found
