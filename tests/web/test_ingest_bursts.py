"""Synchronous calls stored and enqueued in bursts: one refused call never sinks the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dlaas.errors import QueueError, WebError
from dlaas.jobs import layout
from dlaas.jobs.messages import Task
from dlaas.jobs.store import JobStore, PendingJob
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.storage import open_storage
from dlaas.web.ingest import Ingest, SyncCall


def ingest_on(queue: Queue) -> Ingest:
    storage = open_storage(f"memory://{layout.new_id()}")
    return Ingest(JobStore(storage, queue), max_bytes=10**7, max_pixels=10**8)


def call(images: Sequence[bytes]) -> SyncCall:
    named = [(f"{n}.jpg", data) for n, data in enumerate(images)]
    job = PendingJob(one_image=len(images) == 1)
    return SyncCall(job, named, [layout.new_id() for _ in images], "replies-x")


def test_a_refused_call_in_a_burst_leaves_the_others_enqueued(small_jpeg: bytes) -> None:
    queue = open_queue(f"memory://{layout.new_id()}", name="input")
    ingest = ingest_on(queue)
    calls = [call([small_jpeg]), call([small_jpeg, b"not an image"]), call([small_jpeg] * 2)]
    errors = ingest.submit_burst(calls)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], WebError) and errors[1].status_code == 415
    tasks = [Task.from_json(m.body) for m in queue.receive(max_messages=10)]
    assert sorted(t.job_id for t in tasks) == sorted(
        [calls[0].job.job_id, calls[2].job.job_id, calls[2].job.job_id]
    )
    # the refused call's first image was stored, then removed with its job
    stored = ingest.jobs.storage.list("inputs/")
    assert sorted(stored) == sorted(t.key for t in tasks)
    assert all(t.inline_result and t.reply_to == "replies-x" for t in tasks)


class DownQueue:
    """A queue whose sends fail, as a backend that is away."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        raise QueueError("the queue is down")

    def __getattr__(self, name: str) -> object:
        return getattr(self.queue, name)


def test_a_queue_that_is_down_refuses_the_whole_burst_and_stores_nothing(
    small_jpeg: bytes,
) -> None:
    ingest = ingest_on(DownQueue(open_queue("memory://down", name="input")))  # type: ignore[arg-type]
    errors = ingest.submit_burst([call([small_jpeg]), call([small_jpeg] * 3)])
    assert all(isinstance(e, QueueError) for e in errors)
    assert ingest.jobs.storage.list("inputs/") == []


def test_concurrent_calls_each_learn_their_own_outcome(small_jpeg: bytes) -> None:
    queue = open_queue(f"memory://{layout.new_id()}", name="input")
    ingest = ingest_on(queue)

    async def run() -> list[BaseException | None]:
        calls = [call([small_jpeg] if n % 7 else [b"junk"]) for n in range(40)]
        outcomes = await asyncio.gather(*(ingest.submit(c) for c in calls), return_exceptions=True)
        ingest.close()
        return list(outcomes)

    outcomes = asyncio.run(run())
    refused = [n for n, o in enumerate(outcomes) if o is not None]
    assert refused == [n for n in range(40) if n % 7 == 0]
    assert all(isinstance(outcomes[n], WebError) for n in refused)
    assert queue.stats().visible == 40 - len(refused)


def test_a_call_whose_caller_is_cancelled_is_still_stored_or_refused_whole(
    small_jpeg: bytes,
) -> None:
    queue = open_queue(f"memory://{layout.new_id()}", name="input")
    ingest = ingest_on(queue)

    async def run() -> None:
        task = asyncio.ensure_future(ingest.submit(call([small_jpeg])))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ingest.close()

    asyncio.run(run())
    assert queue.stats().visible == len(ingest.jobs.storage.list("inputs/")) == 1
