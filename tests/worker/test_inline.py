"""Inline results: a synchronous call's record travels in the reply, or safely as a file."""

from __future__ import annotations

import uuid

from dlaas.errors import QueueError
from dlaas.jobs import layout, messages
from dlaas.model import Classifier, ModelSpec
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.storage import open_storage
from tests.worker.test_loop import drain_replies, make_worker


def enqueue_inline(storage: object, queue: Queue, payload: bytes) -> messages.Task:
    job_id, image_id = layout.new_id(), layout.new_id()
    key = layout.input_key(job_id, image_id)
    storage.put(key, payload)  # type: ignore[attr-defined]
    task = messages.Task(job_id, image_id, key, reply_to="replies", inline_result=True)
    queue.send(task.to_json())
    return task


def test_an_inline_result_is_in_the_reply_and_not_in_storage(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    name = uuid.uuid4().hex
    storage, queue = open_storage(f"memory://{name}"), open_queue(f"memory://{name}", name="in")
    task = enqueue_inline(storage, queue, small_jpeg)
    worker = make_worker(storage, queue, Classifier(tiny_spec))
    worker.process(queue.receive(max_messages=8))
    (reply,) = drain_replies(queue)
    assert reply.result is not None and reply.result["image_id"] == task.image_id
    assert reply.result["status"] == "done" and len(reply.result["predictions"]) == 5
    assert not storage.exists(layout.result_key(task.job_id, task.image_id))
    assert queue.stats().visible + queue.stats().in_flight == 0


class BrokenReplies:
    """A queue whose reply siblings refuse every send."""

    def __init__(self, inner: Queue) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def sibling(self, name: str) -> Queue:
        sibling = self.inner.sibling(name)

        def refuse(bodies: object) -> list[str]:
            raise QueueError("reply queue is down")

        sibling.send_batch = refuse  # type: ignore[method-assign]
        return sibling


def test_an_inline_result_whose_reply_fails_is_stored_as_a_file(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    name = uuid.uuid4().hex
    storage, queue = open_storage(f"memory://{name}"), open_queue(f"memory://{name}", name="in")
    task = enqueue_inline(storage, queue, small_jpeg)
    worker = make_worker(storage, BrokenReplies(queue), Classifier(tiny_spec))  # type: ignore[arg-type]
    worker.process(queue.receive(max_messages=8))
    record = storage.get_json(layout.result_key(task.job_id, task.image_id))
    assert record["status"] == "done"
    assert queue.stats().visible + queue.stats().in_flight == 0
