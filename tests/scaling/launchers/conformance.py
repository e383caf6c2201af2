"""What every launcher does, whatever starts its workers: the contract of ``base.Launcher``.

A backend passes when ``LauncherConformance`` passes with a ``harness`` fixture for it
(see ``test_conformance.py``). The harness plays the workers: ``report`` writes the state
a worker would report (``records.WorkerHealth``), so the suite needs no model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import pytest

from dlaas.errors import ScalingError
from dlaas.jobs import records
from dlaas.scaling.launchers.base import Launcher, WorkerInfo, WorkerState


class Report(Protocol):
    def __call__(self, worker_id: str, state: records.WorkerHealth) -> None: ...


@dataclass
class Harness:
    launcher: Launcher
    report: Report  # play the worker: it now reports this state
    stops_workers_on_close: bool = False  # local launchers drain what they started


def listed(launcher: Launcher) -> dict[str, WorkerInfo]:
    return {w.id: w for w in launcher.list()}


class LauncherConformance:
    def test_launching_none_starts_none(self, harness: Harness) -> None:
        assert harness.launcher.launch(0) == []
        assert harness.launcher.list() == []

    def test_a_negative_count_is_an_error(self, harness: Harness) -> None:
        with pytest.raises(ValueError, match="negative"):
            harness.launcher.launch(-1)
        assert harness.launcher.list() == []

    def test_launch_returns_new_ids_that_list_shows_starting(self, harness: Harness) -> None:
        # when two workers are launched, then one more
        before = time.time()
        first = harness.launcher.launch(2)
        second = harness.launcher.launch(1)

        # then each launch returns as many new IDs as asked for
        assert len(first) == len(set(first)) == 2
        assert len(second) == 1 and second[0] not in first
        # and each is listed as STARTING (no worker reported yet), since about now
        workers = listed(harness.launcher)
        assert set(workers) == {*first, *second}
        for info in workers.values():
            assert info.state == WorkerState.STARTING
            assert abs(info.started_at - before) < 120

    def test_a_worker_runs_once_it_reports_idle_or_busy(self, harness: Harness) -> None:
        idle, busy, booting = harness.launcher.launch(3)
        harness.report(idle, "idle")
        harness.report(busy, "busy")
        workers = listed(harness.launcher)
        assert (workers[idle].state, workers[idle].busy) == (WorkerState.RUNNING, False)
        assert (workers[busy].state, workers[busy].busy) == (WorkerState.RUNNING, True)
        assert workers[booting].state == WorkerState.STARTING

    def test_drain_affects_only_the_workers_named(self, harness: Harness) -> None:
        # given two running workers
        drained, kept = harness.launcher.launch(2)
        harness.report(drained, "idle")
        harness.report(kept, "idle")

        # when one is drained, with an ID the launcher never started and an empty call
        harness.launcher.drain([drained, "no-such-worker"])
        harness.launcher.drain([])

        # then it is DRAINING or already gone, and the other one runs on
        workers = listed(harness.launcher)
        assert drained not in workers or workers[drained].state == WorkerState.DRAINING
        assert (workers[kept].state, workers[kept].busy) == (WorkerState.RUNNING, False)
        assert "no-such-worker" not in workers

    def test_a_busy_worker_drained_stays_until_it_is_done(self, harness: Harness) -> None:
        (busy,) = harness.launcher.launch(1)
        harness.report(busy, "busy")
        harness.launcher.drain([busy])
        harness.launcher.drain([busy])  # asking twice changes nothing
        assert listed(harness.launcher)[busy].state == WorkerState.DRAINING

    def test_readiness_is_ok_when_a_launch_would_start_promptly(self, harness: Harness) -> None:
        assert harness.launcher.readiness() == "ok"

    def test_close_may_be_called_twice(self, harness: Harness) -> None:
        harness.launcher.launch(1)
        harness.launcher.close()
        harness.launcher.close()
        if harness.stops_workers_on_close:
            assert harness.launcher.list() == []
            with pytest.raises(ScalingError, match="closed"):
                harness.launcher.launch(1)
