"""The controller on the in-memory queue and launcher, with a hand-moved clock."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from dlaas.errors import QueueError
from dlaas.queue import open_queue
from dlaas.queue.base import Queue, QueueStats
from dlaas.scaling.controller import Controller, pick_drain
from dlaas.scaling.launchers.base import WorkerInfo, WorkerState
from dlaas.scaling.launchers.memory import MemoryLauncher
from dlaas.scaling.policy import PolicyConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def queue() -> Iterator[Queue]:
    q = open_queue(f"memory://scaling-{uuid.uuid4().hex}", name="input")
    yield q
    q.destroy()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def launcher(clock: Clock) -> MemoryLauncher:
    return MemoryLauncher(clock=clock)


def make(queue: Queue, launcher: MemoryLauncher, clock: Clock, **config: float) -> Controller:
    policy = PolicyConfig(
        **{"target_backlog_per_worker": 64, "min_workers": 0, "max_workers": 3, **config}  # type: ignore[arg-type]
    )
    return Controller(queue, launcher, policy, interval_s=1.0, history_s=10.0, clock=clock)


def running(launcher: MemoryLauncher, n: int, clock: Clock) -> list[str]:
    ids = []
    for _ in range(n):
        clock.now += 1  # distinct start times, oldest first
        (worker_id,) = launcher.launch(1)
        launcher.set_running(worker_id)
        ids.append(worker_id)
    return ids


def test_cold_start_launches_up_to_max_and_counts_starting_workers(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    controller = make(queue, launcher, clock, upscale_delay_s=30.0)
    queue.send_batch([f"m{i}" for i in range(200)])

    first = controller.step()
    assert (first.desired, first.action) == (3, "launch 3")
    assert [w.state for w in launcher.list()] == [WorkerState.STARTING] * 3

    clock.now += 1
    second = controller.step()  # the three starting workers are capacity already
    assert (second.starting, second.desired, second.action) == (3, 3, "none")


def test_stats_show_the_fleet_as_the_round_left_it(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    """A worker launched from zero is starting in ``/v1/stats`` at once, not a round later
    (a tiny job can finish inside that round); a drained one is draining at once."""
    controller = make(queue, launcher, clock, downscale_delay_s=0.0)
    queue.send_batch(["m"])
    assert controller.step().action == "launch 1"
    assert controller.stats()["workers"] == {
        "desired": 1, "running": 0, "starting": 1, "draining": 0,
    }  # fmt: skip
    assert controller.history()[-1]["starting"] == 0  # history keeps what the round saw

    (only,) = [w.id for w in launcher.list()]
    launcher.set_running(only)
    extra = running(launcher, 1, clock)  # one more running, and a third still starting
    launcher.launch(1)
    (message,) = queue.receive(max_messages=1, visibility_timeout_s=60)
    queue.delete_batch([message.receipt])
    clock.now += 1
    drained = controller.step()
    assert drained.action == "drain 3" and set(extra) <= set(drained.drained)
    assert controller.stats()["workers"] == {
        "desired": 0, "running": 0, "starting": 0, "draining": 3,
    }  # fmt: skip


def test_in_flight_messages_keep_their_workers(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    controller = make(queue, launcher, clock, downscale_delay_s=0.0)
    running(launcher, 2, clock)
    queue.send_batch([f"m{i}" for i in range(128)])
    assert len(queue.receive(max_messages=128, visibility_timeout_s=60)) > 0
    while queue.stats().visible:
        queue.receive(max_messages=10, visibility_timeout_s=60)

    decision = controller.step()
    assert (decision.visible, decision.in_flight) == (0, 128)
    assert (decision.desired, decision.action) == (2, "none")


def test_scale_in_drains_idle_newest_workers_and_only_the_surplus(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    controller = make(queue, launcher, clock, downscale_delay_s=0.0)
    oldest, middle, newest = running(launcher, 3, clock)
    launcher.set_busy(oldest, True)
    launcher.set_busy(newest, True)
    queue.send_batch([f"m{i}" for i in range(64)])

    decision = controller.step()  # 64 messages want 1 worker: drain 2 of 3
    assert decision.drained == (middle, newest)  # the idle one, then the newest busy one
    assert {w.id: w.state for w in launcher.list()}[oldest] == WorkerState.RUNNING

    again = controller.step()  # draining workers are not counted nor drained twice
    assert (again.running, again.draining, again.action) == (1, 2, "none")


def test_scale_to_zero_waits_for_the_downscale_delay(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    controller = make(queue, launcher, clock, downscale_delay_s=15.0)
    workers = running(launcher, 2, clock)
    start = clock.now
    actions = []
    while clock.now <= start + 16:
        decision = controller.step()
        actions.append((clock.now - start, decision.action))
        clock.now += 1
    assert all(action == "none" for t, action in actions if t < 15)
    assert (15.0, "drain 2") in actions
    assert {w.id for w in launcher.list() if w.state == WorkerState.DRAINING} == set(workers)


def test_a_worker_that_dies_while_starting_backs_off_relaunches(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    controller = make(queue, launcher, clock)
    queue.send_batch(["m"])
    (first,) = controller.step().launched
    launcher.remove(first, exit_code=1)  # crashed while loading its model

    clock.now += 1
    held = controller.step()
    assert (held.launched, held.held_back, held.action) == ((), 1, "hold 1 (start-up failures)")

    clock.now += 2  # the first backoff is 2 intervals
    (second,) = controller.step().launched
    launcher.set_running(second)
    clock.now += 1
    controller.step()
    launcher.remove(second, exit_code=0)  # a later idle exit is no start-up failure
    clock.now += 1
    assert controller.step().action == "launch 1"


def test_history_and_stats_are_json_ready_and_short(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    controller = make(queue, launcher, clock)
    sent_at = time.time()
    queue.send_batch(["a", "b"])
    for _ in range(15):
        controller.step()
        clock.now += 1

    history = controller.history()
    assert len(history) == 11  # history_s = 10: the points of the last 10 s
    assert set(history[-1]) == {
        "time", "visible", "in_flight", "running", "starting", "draining", "desired",
    }  # fmt: skip
    stats = json.loads(json.dumps(controller.stats()))
    assert set(stats["queue"]) == {"visible", "in_flight", "oldest_age_s", "dead_lettered"}
    assert (stats["queue"]["visible"], stats["queue"]["in_flight"]) == (2, 0)
    # the real age of the two messages (the memory queue reads the wall clock), not a time
    assert 0.0 <= stats["queue"]["oldest_age_s"] <= time.time() - sent_at + 0.001
    assert stats["workers"] == {"desired": 1, "running": 0, "starting": 1, "draining": 0}
    assert stats["mode"] == "elastic"
    assert stats["policy"]["max_workers"] == 3
    assert len(stats["history"]) == 11


def test_stats_before_the_first_round_and_in_fixed_mode(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    controller = make(queue, launcher, clock, min_workers=2, max_workers=2)
    stats = controller.stats()
    assert stats["workers"]["desired"] == 0
    assert stats["history"] == []
    assert stats["mode"] == "fixed"
    assert controller.step().action == "launch 2"  # fixed mode keeps its floor


def test_one_log_line_per_decision(
    queue: Queue,
    launcher: MemoryLauncher,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller = make(queue, launcher, clock)
    queue.send_batch(["a"] * 10)
    with caplog.at_level(logging.DEBUG, logger="dlaas.scaling"):
        for _ in range(3):
            controller.step()
            clock.now += 1
    lines = [r for r in caplog.records if r.getMessage() == "scale_decision"]
    assert len(lines) == 3
    first = lines[0].__dict__
    assert (first["visible"], first["desired"], first["action"]) == (10, 1, "launch 1")
    assert [r.levelno for r in lines] == [logging.INFO, logging.INFO, logging.DEBUG]


@pytest.mark.parametrize(
    ("workers", "surplus", "expected"),
    [
        # (id, state, started_at, busy)
        ([("a", "running", 1, False), ("b", "running", 2, False)], 1, ["b"]),
        ([("a", "running", 1, False), ("b", "running", 2, True)], 1, ["a"]),
        ([("a", "running", 1, None), ("b", "starting", 3, None)], 1, ["b"]),
        ([("a", "running", 1, True), ("b", "draining", 2, False)], 1, ["a"]),
        ([("a", "running", 1, False)], 3, ["a"]),
        ([("a", "running", 1, False)], 0, []),
    ],
)
def test_pick_drain(
    workers: list[tuple[str, str, float, bool | None]], surplus: int, expected: list[str]
) -> None:
    infos = [WorkerInfo(i, WorkerState(s), t, b) for i, s, t, b in workers]
    assert pick_drain(infos, surplus) == expected


class FlakyQueue(Queue):
    """Fails its first ``stats`` call, like a queue that is briefly unreachable."""

    name = url = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    def stats(self) -> QueueStats:
        self.calls += 1
        if self.calls == 1:
            raise QueueError("queue unreachable")
        return QueueStats(visible=0, in_flight=0, oldest_age_s=0.0)

    def send_batch(self, bodies: object) -> list[str]:
        raise NotImplementedError

    def _receive(self, *args: object, **kwargs: object) -> list[object]:  # type: ignore[override]
        raise NotImplementedError

    def delete(self, receipt: str) -> None:
        raise NotImplementedError

    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        raise NotImplementedError

    def sibling(self, name: str) -> Queue:
        raise NotImplementedError

    def purge(self) -> None:
        raise NotImplementedError


def test_run_survives_errors_wakes_early_and_stops() -> None:
    queue = FlakyQueue()
    controller = Controller(queue, MemoryLauncher(), PolicyConfig(max_workers=1), interval_s=30.0)
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,))
    thread.start()
    try:
        controller.wake()  # the first round failed; a wake runs the next one now
        for _ in range(200):
            if controller.last_decision() is not None:
                break
            time.sleep(0.01)
            controller.wake()
        assert controller.last_decision() is not None
        assert queue.calls >= 2
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_wake_runs_a_round_only_while_the_fleet_is_empty(
    queue: Queue, launcher: MemoryLauncher, clock: Clock
) -> None:
    controller = make(queue, launcher, clock)
    controller.wake()  # no decision yet: wake
    assert controller._wake.is_set()
    controller._wake.clear()
    queue.send_batch(["m"])
    controller.step()  # cold start: one worker starting
    controller.wake()  # a request per image must not cost a round per image
    assert not controller._wake.is_set()
