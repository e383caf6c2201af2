"""A job's status and counts, from how many images it has and the results seen: one rule.

``JobStore.status`` reads what the rule needs from the store; the event stream feeds it
what it has seen so far; the webhook and the listing of a job over a source use it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypedDict

JobState = Literal["running", "complete", "cancelling", "cancelled"]


class JobCounts(TypedDict, total=False):
    total: int
    queued: int
    done: int
    failed: int
    cancelled: int  # only once the job is cancelled
    settled: int  # a job over a source, while it runs: images with a result, any status


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands. A cancelled job is ``cancelling`` while any image is queued or
    in a worker's hands, and ``cancelled`` once every image is done, failed or cancelled."""

    state: JobState
    counts: JobCounts

    @property
    def finished(self) -> bool:
        """Nothing of the job is left to run: the moment its webhook is due."""
        return self.state in ("complete", "cancelled")


def job_status(
    total: int, statuses: Iterable[str], *, cancelled: bool, listing: bool = False
) -> JobStatus:
    """The one rule. A cancelled image's result is proof of the cancel too, for readers
    that see no cancel marker (an event stream). A job whose source is still being
    listed (``listing``) is not finished, however many of its images are."""
    tally = {"done": 0, "failed": 0, "cancelled": 0}
    for status in statuses:
        if status in tally:
            tally[status] += 1
    cancelled = cancelled or tally["cancelled"] > 0
    finished = sum(tally.values())
    counts: JobCounts = {
        "total": total,
        "queued": max(0, total - finished),
        "done": tally["done"],
        "failed": tally["failed"],
    }
    if cancelled:
        counts["cancelled"] = tally["cancelled"]
    complete = finished >= total and not listing
    state: JobState
    if cancelled:
        state = "cancelled" if complete else "cancelling"
    else:
        state = "complete" if complete else "running"
    return JobStatus(state, counts)
