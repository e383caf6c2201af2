"""A job's status and counts from its manifest and result records: one rule for the API,
the job list and the webhook payload."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from dlaas.keys import ANONYMOUS

JobState = Literal["running", "complete", "cancelling", "cancelled"]


def job_counts(
    total: int, statuses: Iterable[str], *, cancelled: bool
) -> tuple[JobState, dict[str, int]]:
    """``(status, counts)``. ``counts`` gains ``cancelled`` once the job is cancelled.

    A cancelled job is ``cancelling`` while any image is still queued or in a worker's
    hands, and ``cancelled`` once every image is done, failed or cancelled. A cancelled
    image's result is proof of the cancel too, for readers that see no cancel marker
    (an event stream).
    """
    tally = {"done": 0, "failed": 0, "cancelled": 0}
    for status in statuses:
        if status in tally:
            tally[status] += 1
    cancelled = cancelled or tally["cancelled"] > 0
    finished = sum(tally.values())
    counts = {
        "total": total,
        "queued": max(0, total - finished),
        "done": tally["done"],
        "failed": tally["failed"],
    }
    if cancelled or tally["cancelled"]:
        counts["cancelled"] = tally["cancelled"]
    complete = finished >= total
    state: JobState
    if cancelled:
        state = "cancelled" if complete else "cancelling"
    else:
        state = "complete" if complete else "running"
    return state, counts


def is_finished(state: str) -> bool:
    """Nothing of the job is left to run: the moment its webhook is due."""
    return state in ("complete", "cancelled")


def owner_of(manifest: Mapping[str, Any]) -> str:
    """The manifest's owner; jobs stored before API keys existed belong to ``anonymous``."""
    return str(manifest.get("owner") or ANONYMOUS)
