"""The rules for EC2 and Auto Scaling workers, as a table: state, busy, and may it go?"""

from __future__ import annotations

import pytest

from dlaas.scaling.launchers.base import WorkerState, reported_health
from dlaas.scaling.launchers.fleet import Grace, Heartbeat, Instance, assess

NOW = 10_000.0
GRACE = Grace(boot_s=600, stop_s=60, drain_s=120)
S, R, D = WorkerState.STARTING, WorkerState.RUNNING, WorkerState.DRAINING


def instance(
    phase: str = "running",
    *,
    age_s: float = 100,
    drained_s_ago: float | None = None,
    protected: bool = False,
) -> Instance:
    drained_at = None if drained_s_ago is None else NOW - drained_s_ago
    return Instance("i-1", phase, NOW - age_s, drained_at, protected)  # type: ignore[arg-type]


def beat(state: str | None, age_s: float = 0) -> Heartbeat:
    return Heartbeat(reported_health({"state": state}), NOW - age_s)


# (instance, heartbeat, expected state, expected busy, may the launcher terminate it?)
RULES = [
    # booting and running
    (instance("pending"), beat(None), S, None, False),
    (instance(age_s=599), beat(None), S, None, False),
    (instance(age_s=601), beat(None), S, None, True),  # the bootstrap failed
    (instance(), beat("starting"), S, None, False),
    (instance(), beat("idle"), R, False, False),
    (instance(), beat("busy"), R, True, False),
    (instance(protected=True), beat("idle"), R, True, False),
    (instance(), beat("rebooting"), S, None, False),  # a state this version does not know
    (instance(), beat("stopped", age_s=30), D, False, False),  # may be restarting
    (instance(), beat("stopped", age_s=61), D, False, True),  # failed to power off
    (instance("leaving"), beat(None), D, False, False),
    # drained
    (instance("pending", drained_s_ago=1), beat(None), D, False, True),
    (instance(drained_s_ago=1), beat(None), D, False, True),
    (instance(drained_s_ago=1), beat("idle"), D, False, False),  # exits within a second
    (instance(drained_s_ago=121), beat("idle"), D, False, True),  # not listening
    (instance(drained_s_ago=1), beat("stopped"), D, False, True),
    (instance(drained_s_ago=1), beat("busy"), D, True, False),
    (instance(drained_s_ago=10**6), beat("busy", age_s=10**6), D, True, False),  # never
    (instance(drained_s_ago=10**6, protected=True), beat(None), D, True, False),  # never
]


@pytest.mark.parametrize(("inst", "heartbeat", "state", "busy", "retire"), RULES)
def test_rules(
    inst: Instance, heartbeat: Heartbeat, state: WorkerState, busy: bool | None, retire: bool
) -> None:
    verdict = assess(inst, heartbeat, NOW, GRACE)
    assert (verdict.state, verdict.busy, verdict.retire is not None) == (state, busy, retire)


def test_busy_is_never_retired_whatever_else_holds() -> None:
    for phase in ("pending", "running", "leaving"):
        for drained in (None, 0.0, 10**9):
            for age in (0, 10**9):
                for protected, state in ((True, "idle"), (False, "busy"), (True, None)):
                    inst = instance(phase, age_s=age, drained_s_ago=drained, protected=protected)
                    assert assess(inst, beat(state, age_s=age), NOW, GRACE).retire is None
