"""The local launcher with real child processes: a tiny stand-in for ``dlaas worker``.

The stand-in reports its state in a file named after ``DLAAS_WORKER_ID`` (what the real
worker does in storage), handles SIGTERM like the real one and can crash or idle-exit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dlaas.errors import ScalingError
from dlaas.jobs import layout
from dlaas.scaling.launchers.base import WorkerState
from dlaas.scaling.launchers.local import LocalLauncher, health_probe
from dlaas.storage import open_storage

WORKER = r"""
import json, os, signal, sys, time
from pathlib import Path

worker_id = os.environ["DLAAS_WORKER_ID"]
state_dir = Path(os.environ["STATE_DIR"])
mode = os.environ.get("MODE", "serve")

def report(state):
    tmp = state_dir / (worker_id + ".tmp")
    tmp.write_text(json.dumps({"state": state}))
    tmp.replace(state_dir / (worker_id + ".json"))

stopping = False
def on_term(signum, frame):
    global stopping
    stopping = True

time.sleep(float(os.environ.get("LOAD_S", "0")))  # the model load, before any handler
if mode == "crash":
    sys.exit(3)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
report("idle")
deadline = time.monotonic() + float(os.environ.get("IDLE_EXIT_S", "60"))
while not stopping and time.monotonic() < deadline:
    time.sleep(0.02)
report("stopped")
"""


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def file_probe(state_dir: Path) -> Callable[[str], str | None]:
    def probe(worker_id: str) -> str | None:
        try:
            return str(json.loads((state_dir / f"{worker_id}.json").read_text())["state"])
        except FileNotFoundError:
            return None

    return probe


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., LocalLauncher]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    made: list[LocalLauncher] = []

    def factory(probe: bool = True, **env: str) -> LocalLauncher:
        launcher = LocalLauncher(
            [sys.executable, "-S", str(script)],
            env={"STATE_DIR": str(tmp_path), **env},
            probe=file_probe(tmp_path) if probe else None,
            ready_after_s=0.3,
            stop_timeout_s=5.0,
        )
        made.append(launcher)
        return launcher

    yield factory
    for launcher in made:
        launcher.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_start_report_ready_and_drain_cleanly(
    make: Callable[..., LocalLauncher], tmp_path: Path
) -> None:
    # given two launched workers that take a moment to load their model
    launcher = make(LOAD_S="0.3")
    ids = launcher.launch(2)
    assert len(set(ids)) == 2
    assert {w.state for w in launcher.list()} == {WorkerState.STARTING}

    # then each becomes RUNNING once it reports ready, under the ID it was given
    wait_for(lambda: {w.state for w in launcher.list()} == {WorkerState.RUNNING})
    assert {p.stem for p in tmp_path.glob("*.json")} == set(ids)
    assert all(w.busy is False for w in launcher.list())

    # when one is drained it shows DRAINING, exits 0 and is reaped
    pid = launcher.pids[ids[0]]
    launcher.drain([ids[0], "no-such-worker"])
    assert {w.id: w.state for w in launcher.list()}[ids[0]] == WorkerState.DRAINING
    wait_for(lambda: [w.id for w in launcher.list()] == [ids[1]])
    assert not alive(pid)
    assert (launcher.exit_codes[0], launcher.crash_count) == (1, 0)


def test_crashes_are_counted_and_reaped(make: Callable[..., LocalLauncher]) -> None:
    launcher = make(MODE="crash")
    launcher.launch(2)
    wait_for(lambda: not launcher.list())
    assert launcher.crash_count == 2
    assert launcher.exit_codes == {3: 2}


def test_idle_exit_is_not_a_crash(make: Callable[..., LocalLauncher]) -> None:
    launcher = make(IDLE_EXIT_S="0.2")
    launcher.launch(1)
    wait_for(lambda: not launcher.list())
    assert (launcher.exit_codes[0], launcher.crash_count) == (1, 0)


def test_draining_a_worker_still_loading_is_not_a_crash(
    make: Callable[..., LocalLauncher],
) -> None:
    # given a worker killed by SIGTERM before it could install its handler
    launcher = make(LOAD_S="30")
    launcher.launch(1)
    launcher.drain([w.id for w in launcher.list()])
    wait_for(lambda: not launcher.list())
    assert launcher.exit_codes == {-signal.SIGTERM: 1}
    assert launcher.crash_count == 0


def test_without_a_probe_workers_run_after_ready_after_s(
    make: Callable[..., LocalLauncher],
) -> None:
    launcher = make(probe=False)
    launcher.launch(1)
    (info,) = launcher.list()
    assert (info.state, info.busy) == (WorkerState.STARTING, None)
    time.sleep(0.35)
    (info,) = launcher.list()
    assert (info.state, info.busy) == (WorkerState.RUNNING, None)


def test_close_drains_then_kills_stragglers(make: Callable[..., LocalLauncher]) -> None:
    launcher = make(MODE="stubborn")
    launcher.stop_timeout_s = 0.5
    launcher.launch(1)
    wait_for(lambda: [w.state for w in launcher.list()] == [WorkerState.RUNNING])
    pid = next(iter(launcher.pids.values()))

    started = time.monotonic()
    launcher.close()
    assert time.monotonic() - started < 5
    assert not alive(pid)
    assert launcher.list() == []
    assert launcher.exit_codes == {-signal.SIGKILL: 1}
    assert launcher.crash_count == 0
    with pytest.raises(ScalingError, match="closed"):
        launcher.launch(1)


def test_a_missing_worker_command_is_a_clear_error() -> None:
    launcher = LocalLauncher(["/nonexistent/dlaas-worker"])
    with pytest.raises(ScalingError, match="cannot start worker command"):
        launcher.launch(1)
    with pytest.raises(ScalingError, match="needs a worker command"):
        LocalLauncher([])


def test_health_probe_reads_the_worker_record() -> None:
    storage = open_storage(f"memory://probe-{uuid.uuid4().hex}")
    probe = health_probe(storage)
    assert probe("w1") is None
    storage.put_json(layout.worker_key("w1"), {"worker_id": "w1", "state": "busy"})
    assert probe("w1") == "busy"
    storage.put(layout.worker_key("w2"), b"not json")
    assert probe("w2") is None
