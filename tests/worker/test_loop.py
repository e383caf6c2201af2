"""Worker semantics on memory backends: batching, failures, exits, heartbeats."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dlaas.errors import StorageError
from dlaas.jobs import layout, messages
from dlaas.model import Classifier, ModelSpec
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.storage import open_storage
from dlaas.storage.base import Storage
from dlaas.worker import Worker, WorkerOptions


@pytest.fixture
def storage() -> Storage:
    return open_storage(f"memory://{uuid.uuid4().hex}")


@pytest.fixture
def queue() -> Queue:
    return open_queue(f"memory://{uuid.uuid4().hex}", name="input", max_receives=3)


def make_worker(storage: Storage, queue: Queue, classifier: Any, **kwargs: Any) -> Worker:
    options: dict[str, Any] = {
        "batch_size": 8,
        "max_batch_delay_ms": 20,
        "idle_timeout_s": 1.0,
        "visibility_timeout_s": 2,
        "receive_wait_s": 0.1,
    }
    options.update(kwargs)
    return Worker(
        storage=storage,
        queue=queue,
        classifier=classifier,
        worker_id="w-test",
        options=WorkerOptions(**options),
    )


def enqueue(
    storage: Storage, queue: Queue, payloads: list[bytes], reply_to: str | None = "replies"
) -> list[messages.Task]:
    job_id = layout.new_id()
    tasks = []
    for payload in payloads:
        image_id = layout.new_id()
        key = layout.input_key(job_id, image_id)
        storage.put(key, payload)
        tasks.append(messages.Task(job_id=job_id, image_id=image_id, key=key, reply_to=reply_to))
    queue.send_batch([t.to_json() for t in tasks])
    return tasks


def drain_replies(queue: Queue, *, final_only: bool = True) -> list[messages.Reply]:
    """Every reply sent so far; by default without the progress notices."""
    replies = []
    reply_queue = queue.sibling("replies")
    while batch := reply_queue.receive(max_messages=10, wait_time_s=0):
        replies.extend(messages.reply_from_json(m.body) for m in batch)
        reply_queue.delete_batch([m.receipt for m in batch])
    return [r for r in replies if not final_only or not isinstance(r, messages.Progress)]


def test_one_batch_one_forward_pass(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    classifier = Classifier(tiny_spec)
    calls: list[int] = []
    real_predict = classifier.predict

    def counting_predict(batch: np.ndarray, top_k: int = 5) -> Any:
        calls.append(len(batch))
        return real_predict(batch, top_k=top_k)

    classifier.predict = counting_predict  # type: ignore[method-assign]
    tasks = enqueue(storage, queue, [small_jpeg] * 6)
    worker = make_worker(storage, queue, classifier)
    assert worker.run() == 0
    assert worker.exit_reason == "idle"
    assert calls == [6]
    for task in tasks:
        result = storage.get_json(layout.result_key(task.job_id, task.image_id))
        assert result["status"] == "done"
        assert result["worker_id"] == "w-test"
        assert result["model"] == tiny_spec.name
        assert {"queue_wait", "fetch", "decode", "infer_batch"} <= set(result["timings_ms"])
    assert sorted(r.image_id for r in drain_replies(queue)) == sorted(t.image_id for t in tasks)
    stats = queue.stats()
    assert (stats.visible, stats.in_flight) == (0, 0)


def test_a_bad_image_fails_alone(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    good, bad = enqueue(storage, queue, [small_jpeg, b"\xff\xd8\xff\xe0 truncated garbage"])
    make_worker(storage, queue, Classifier(tiny_spec)).run()
    assert storage.get_json(layout.result_key(good.job_id, good.image_id))["status"] == "done"
    failed = storage.get_json(layout.result_key(bad.job_id, bad.image_id))
    assert failed["status"] == "failed"
    assert failed["error"]
    assert queue.stats().visible == 0  # the bad image's message was deleted too
    assert {r.status for r in drain_replies(queue)} == {"done", "failed"}


class FlakyStorage:
    """Wraps a storage; ``get`` fails ``failures`` times before succeeding."""

    def __init__(self, inner: Storage, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, key: str) -> bytes:
        if key.startswith("inputs/") and self.failures > 0:
            self.failures -= 1
            raise StorageError("simulated outage")
        return self.inner.get(key)


def test_transient_storage_error_leaves_the_message_for_retry(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    (task,) = enqueue(storage, queue, [small_jpeg])
    flaky = FlakyStorage(storage, failures=1)
    worker = make_worker(
        flaky, queue, Classifier(tiny_spec), visibility_timeout_s=1, idle_timeout_s=3
    )  # type: ignore[arg-type]
    worker.run()
    result = storage.get_json(layout.result_key(task.job_id, task.image_id))
    assert result["status"] == "done"  # succeeded on redelivery


def test_missing_input_is_a_failed_result(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    (task,) = enqueue(storage, queue, [small_jpeg])
    storage.delete(task.key)
    make_worker(storage, queue, Classifier(tiny_spec)).run()
    result = storage.get_json(layout.result_key(task.job_id, task.image_id))
    assert result["status"] == "failed"
    assert "no longer in storage" in result["error"]


def test_malformed_body_goes_to_dead_letter(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec
) -> None:
    queue.send("{not json")
    make_worker(storage, queue, Classifier(tiny_spec)).run()
    assert queue.stats().visible == 0
    dlq = queue.dead_letter().receive(max_messages=1, wait_time_s=0)
    assert [m.body for m in dlq] == ["{not json"]


def test_drain_marker_stops_the_worker(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec
) -> None:
    storage.put(layout.drain_key("w-test"), b"")
    worker = make_worker(storage, queue, Classifier(tiny_spec), idle_timeout_s=60)
    started = time.monotonic()
    assert worker.run() == 0
    assert worker.exit_reason == "drained"
    assert time.monotonic() - started < 5
    record = storage.get_json(layout.worker_key("w-test"))
    assert record["state"] == "stopped"


class SlowClassifier:
    """Delegates to a real classifier but makes each forward pass take ``delay_s``."""

    def __init__(
        self, inner: Classifier, delay_s: float, started: threading.Event | None = None
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.delay_s = delay_s
        self.started = started

    def preprocess(self, data: bytes) -> np.ndarray:
        return self.inner.preprocess(data)

    def predict(self, batch: np.ndarray, top_k: int = 5) -> Any:
        if self.started is not None:
            self.started.set()
        time.sleep(self.delay_s)
        return self.inner.predict(batch, top_k=top_k)


def test_heartbeat_keeps_a_slow_batch_invisible(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    (task,) = enqueue(storage, queue, [small_jpeg])
    slow = SlowClassifier(Classifier(tiny_spec), delay_s=3.5)
    worker = make_worker(storage, queue, slow, visibility_timeout_s=1, idle_timeout_s=0.5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    time.sleep(0.5)
    # Well past the 1 s visibility timeout, the message must still be hidden.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert queue.receive(max_messages=1, wait_time_s=0) == []
        time.sleep(0.2)
    thread.join(timeout=10)
    result = storage.get_json(layout.result_key(task.job_id, task.image_id))
    assert result["status"] == "done"
    assert queue.stats().in_flight == 0


def test_heartbeat_keeps_a_slow_batch_invisible_after_an_idle_stretch(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    # given: a worker whose heartbeat thread has run one quick batch, then idled for
    # several beat intervals (it is not told of the next batch; it looks every interval)
    enqueue(storage, queue, [small_jpeg])
    started = threading.Event()
    slow = SlowClassifier(Classifier(tiny_spec), delay_s=0.0, started=started)
    worker = make_worker(storage, queue, slow, visibility_timeout_s=1, idle_timeout_s=30)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert started.wait(5)
    time.sleep(1.3)
    # when: a slow batch comes
    slow.delay_s, started = 3.5, threading.Event()
    slow.started = started
    (task,) = enqueue(storage, queue, [small_jpeg])
    assert started.wait(5)
    # then: well past the 1 s visibility timeout, its message is still hidden
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert queue.receive(max_messages=1, wait_time_s=0) == []
        time.sleep(0.2)
    worker.stop()
    thread.join(timeout=10)
    result = storage.get_json(layout.result_key(task.job_id, task.image_id))
    assert result["status"] == "done"


def test_stop_finishes_the_batch_in_hand_and_takes_no_more(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    started = threading.Event()
    first = enqueue(storage, queue, [small_jpeg] * 2)
    slow = SlowClassifier(Classifier(tiny_spec), delay_s=0.5, started=started)
    worker = make_worker(storage, queue, slow, batch_size=2, idle_timeout_s=60)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert started.wait(5)
    later = enqueue(storage, queue, [small_jpeg] * 2)
    worker.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    for task in first:
        assert storage.exists(layout.result_key(task.job_id, task.image_id))
    for task in later:
        assert not storage.exists(layout.result_key(task.job_id, task.image_id))
    assert queue.stats().visible == 2


def test_exits_when_the_watched_parent_is_gone(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    worker = make_worker(
        storage, queue, Classifier(tiny_spec), idle_timeout_s=60, parent_pid=gone.pid
    )
    started = time.monotonic()
    assert worker.run() == 0
    assert worker.exit_reason == "parent_exited"
    assert time.monotonic() - started < 5


def test_keeps_running_while_the_watched_parent_lives(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec
) -> None:
    worker = make_worker(
        storage, queue, Classifier(tiny_spec), idle_timeout_s=0.5, parent_pid=os.getpid()
    )
    assert worker.run() == 0
    assert worker.exit_reason == "idle"


def test_exits_after_idle_timeout(storage: Storage, queue: Queue, tiny_spec: ModelSpec) -> None:
    worker = make_worker(storage, queue, Classifier(tiny_spec), idle_timeout_s=0.5)
    started = time.monotonic()
    assert worker.run() == 0
    assert 0.4 <= time.monotonic() - started < 3
    assert worker.exit_reason == "idle"


def test_fills_a_batch_from_several_receives(
    storage: Storage, queue: Queue, tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    sizes: list[int] = []
    classifier = Classifier(tiny_spec)
    real: Callable[..., Any] = classifier.predict

    def record(batch: np.ndarray, top_k: int = 5) -> Any:
        sizes.append(len(batch))
        return real(batch, top_k=top_k)

    classifier.predict = record  # type: ignore[method-assign]
    enqueue(storage, queue, [small_jpeg] * 20)
    make_worker(storage, queue, classifier, batch_size=8).run()
    assert sum(sizes) == 20
    assert max(sizes) == 8
