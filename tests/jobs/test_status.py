"""One rule for a job's status and counts: a table of cases."""

from __future__ import annotations

import pytest

from dlaas.jobs.status import JobStatus, job_status


@pytest.mark.parametrize(
    ("total", "statuses", "marker", "state", "counts"),
    [
        (3, [], False, "running", {"queued": 3, "done": 0, "failed": 0}),
        (3, ["done", "failed"], False, "running", {"queued": 1, "done": 1, "failed": 1}),
        (2, ["done", "failed"], False, "complete", {"queued": 0, "done": 1, "failed": 1}),
        (3, ["done"], True, "cancelling", {"queued": 2, "done": 1, "cancelled": 0}),
        (3, ["done", "cancelled", "cancelled"], True, "cancelled", {"queued": 0, "cancelled": 2}),
        # no marker seen (an event stream), but a cancelled image says the job was cancelled
        (3, ["done", "cancelled", "cancelled"], False, "cancelled", {"queued": 0, "cancelled": 2}),
        (3, ["done", "cancelled"], False, "cancelling", {"queued": 1, "cancelled": 1}),
        (1, ["classifying"], False, "running", {"queued": 1}),  # not a result status
    ],
)
def test_job_status(
    total: int, statuses: list[str], marker: bool, state: str, counts: dict[str, int]
) -> None:
    status = job_status(total, statuses, cancelled=marker)
    assert status.state == state
    assert status.counts["total"] == total
    assert {k: status.counts.get(k) for k in counts} == counts


def test_finished_states_are_those_with_nothing_left_to_run() -> None:
    states = ("running", "complete", "cancelling", "cancelled")
    finished = [s for s in states if JobStatus(s, {}).finished]  # type: ignore[arg-type]
    assert finished == ["complete", "cancelled"]
