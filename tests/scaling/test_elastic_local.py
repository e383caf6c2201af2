"""The controller, the local launcher and the sqlite queue together, with real processes.

The workers are a stand-in for ``dlaas worker`` (no model): they take batches from the
real queue, "classify" by sleeping, record what they processed, honour SIGTERM like the
real worker and report their state for the launcher's probe. From idle, a 200-message
job must scale the fleet to its max, finish every message exactly once, then drain back
to 0, with no message taken by a worker after it was asked to drain.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dlaas.queue import open_queue
from dlaas.scaling.controller import Controller
from dlaas.scaling.launchers.local import LocalLauncher
from dlaas.scaling.policy import PolicyConfig

pytestmark = pytest.mark.slow

WORKER = r"""
import json, os, signal, time
from pathlib import Path
from dlaas.queue import open_queue

worker_id = os.environ["DLAAS_WORKER_ID"]
out = Path(os.environ["OUT_DIR"])
queue = open_queue(os.environ["QUEUE_URL"], name="input")
term_at = []

def report(state):
    tmp = out / (worker_id + ".tmp")
    tmp.write_text(state)
    tmp.replace(out / (worker_id + ".state"))

signal.signal(signal.SIGTERM, lambda *_: term_at.append(time.time()))
time.sleep(0.3)  # the model load
report("idle")
idle_since = time.monotonic()
with (out / (worker_id + ".log")).open("w") as log:
    while not term_at:
        batch = queue.receive(max_messages=8, wait_time_s=0.2, visibility_timeout_s=60)
        received_at = time.time()
        if term_at:
            for m in batch:
                queue.change_visibility(m.receipt, 0)  # taken after the drain: hand back
            break
        if not batch:
            if time.monotonic() - idle_since > 20:
                break
            continue
        report("busy")
        time.sleep(0.02 * len(batch))
        for m in batch:
            log.write(json.dumps({"body": m.body, "received_at": received_at}) + "\n")
        log.flush()
        queue.delete_batch([m.receipt for m in batch])
        report("idle")
        idle_since = time.monotonic()
report("stopped")
if term_at:
    (out / (worker_id + ".term")).write_text(repr(term_at[0]))
"""


def state_probe(out: Path) -> Callable[[str], str | None]:
    def probe(worker_id: str) -> str | None:
        try:
            return (out / f"{worker_id}.state").read_text()
        except FileNotFoundError:
            return None

    return probe


def test_a_200_message_job_scales_to_max_completes_and_drains_to_zero(tmp_path: Path) -> None:
    # given an idle elastic fleet of 0..3 stand-in workers on a sqlite queue
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    queue_url = f"sqlite://{tmp_path / 'queue.db'}"
    queue = open_queue(queue_url, name="input")
    launcher = LocalLauncher(
        [sys.executable, str(script)],
        env={"OUT_DIR": str(tmp_path), "QUEUE_URL": queue_url},
        probe=state_probe(tmp_path),
        stop_timeout_s=10,
    )
    config = PolicyConfig(target_backlog_per_worker=16, min_workers=0, max_workers=3,
                          downscale_delay_s=1.0)  # fmt: skip
    controller = Controller(queue, launcher, config, interval_s=0.1)
    stop = threading.Event()
    loop = threading.Thread(target=controller.run, args=(stop,))
    loop.start()
    try:
        # when 200 messages arrive
        bodies = {f"img-{i}" for i in range(200)}
        queue.send_batch(sorted(bodies))
        controller.wake()

        # then every message is processed and the fleet goes back to 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            last = controller.last_decision()
            scaled_up = any(p["desired"] > 0 for p in controller.history())
            idle = last is not None and sum(
                (last.visible, last.in_flight, last.desired, last.running, last.starting,
                 last.draining)
            ) == 0  # fmt: skip
            if scaled_up and idle:
                break
            time.sleep(0.1)
        assert not launcher.list(), controller.stats()["workers"]
    finally:
        stop.set()
        loop.join(timeout=10)
        launcher.close()
        queue.close()

    history = controller.history()
    assert max(p["running"] for p in history) == 3
    assert history[-1]["running"] + history[-1]["starting"] + history[-1]["draining"] == 0

    processed = [
        json.loads(line) | {"worker": log.stem}
        for log in tmp_path.glob("*.log")
        for line in log.read_text().splitlines()
    ]
    assert sorted(p["body"] for p in processed) == sorted(bodies)  # all, and each once

    # no message taken by a worker after its drain; every worker left cleanly
    term_at = {f.stem: float(f.read_text()) for f in tmp_path.glob("*.term")}
    assert term_at, "the fleet should have been drained, not left to idle out"
    for p in processed:
        assert p["received_at"] < term_at.get(p["worker"], float("inf"))
    assert launcher.crash_count == 0
    assert set(launcher.exit_codes) == {0}
