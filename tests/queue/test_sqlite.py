"""SqliteQueue: the conformance suite, plus many processes and threads on one file."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from dlaas.errors import ConfigError
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.queue.sqlite import SqliteQueue

from .conformance import MAX_RECEIVES, QueueConformance

# Fork, not spawn: the workers inherit a queue whose connection the parent already
# opened, which is exactly what `dlaas serve` does when it starts its workers.
FORK = multiprocessing.get_context("fork")


class TestSqliteQueue(QueueConformance):
    wait_slack_s = 0.5

    @pytest.fixture
    def queue(self, tmp_path: Path) -> Iterator[Queue]:
        queue = open_queue(f"sqlite://{tmp_path}/queue.db", name="q", max_receives=MAX_RECEIVES)
        yield queue
        queue.close()


# Many processes ----------------------------------------------------------------------

STRESS_MESSAGES = 2000
STRESS_WORKERS = 8


def _record(out: Path, **report: object) -> None:
    out.write_text(json.dumps(report))


def _stress_sender(queue: Queue, out: Path, done: Event) -> None:
    ids: list[str] = []
    errors: list[str] = []
    try:
        for start in range(0, STRESS_MESSAGES, 25):
            ids += queue.send_batch([f"task-{i}" for i in range(start, start + 25)])
    except BaseException:
        errors.append(traceback.format_exc())
    finally:
        done.set()
        _record(out, ids=ids, errors=errors)


def _stress_worker(queue: Queue, out: Path, sender_done: Event) -> None:
    received: list[str] = []
    counts: list[int] = []
    errors: list[str] = []
    replies = queue.sibling("replies")
    try:
        while True:
            batch = queue.receive(max_messages=16, wait_time_s=0.5, visibility_timeout_s=60)
            if not batch:
                if sender_done.is_set() and queue.stats().visible == 0:
                    break
                continue
            received += [m.id for m in batch]
            counts += [m.receive_count for m in batch]
            replies.send_batch([m.id for m in batch])  # like a worker notifying the web tier
            queue.delete_batch([m.receipt for m in batch])
    except BaseException:
        errors.append(traceback.format_exc())
    finally:
        _record(out, ids=received, counts=counts, errors=errors)


def _stress_web_tier(queue: Queue, out: Path, stop: Event) -> None:
    """Polls stats (the autoscaler's view) and drains the reply queue, as `dlaas serve` does."""
    polls, replies_seen, errors = 0, [], []
    replies = queue.sibling("replies")
    try:
        while not stop.is_set():
            stats = queue.stats()
            # one snapshot: no more than was sent, no more in flight than 8 workers x 16 hold
            assert stats.visible + stats.in_flight <= STRESS_MESSAGES
            assert stats.in_flight <= STRESS_WORKERS * 16
            polls += 1
            batch = replies.receive(max_messages=100, wait_time_s=0.02)
            replies_seen += [m.body for m in batch]
            replies.delete_batch([m.receipt for m in batch])
        while batch := replies.receive(max_messages=100):
            replies_seen += [m.body for m in batch]
            replies.delete_batch([m.receipt for m in batch])
    except BaseException:
        errors.append(traceback.format_exc())
    finally:
        _record(out, polls=polls, replies=replies_seen, errors=errors)


def test_eight_worker_processes_process_every_message_exactly_once(tmp_path: Path) -> None:
    # given: one queue file, opened (and connected) here before forking
    queue = open_queue(f"sqlite://{tmp_path}/queue.db", name="input")
    assert queue.stats().visible == 0
    sender_done, stop_web = FORK.Event(), FORK.Event()
    reports = {name: tmp_path / f"{name}.json" for name in ["sender", "web"]}
    reports |= {f"worker{i}": tmp_path / f"worker{i}.json" for i in range(STRESS_WORKERS)}
    processes = [
        FORK.Process(target=_stress_worker, args=(queue, reports[f"worker{i}"], sender_done))
        for i in range(STRESS_WORKERS)
    ]
    processes.append(FORK.Process(target=_stress_web_tier, args=(queue, reports["web"], stop_web)))
    processes.append(
        FORK.Process(target=_stress_sender, args=(queue, reports["sender"], sender_done))
    )
    # when: 8 workers drain while a sender fills and a web tier polls stats and reads replies
    started = time.monotonic()
    for process in processes:
        process.start()
    for process in processes[:STRESS_WORKERS]:
        process.join(timeout=60)
    elapsed_s = time.monotonic() - started
    stop_web.set()
    for process in processes[STRESS_WORKERS:]:
        process.join(timeout=10)
    # then: nothing failed, nothing mentions a lock, and each message ran exactly once
    assert [p.exitcode for p in processes] == [0] * len(processes)
    results = {name: json.loads(path.read_text()) for name, path in reports.items()}
    errors = [e for result in results.values() for e in result["errors"]]
    assert errors == [], errors[0]
    sent = results["sender"]["ids"]
    processed = [i for n in range(STRESS_WORKERS) for i in results[f"worker{n}"]["ids"]]
    assert len(sent) == STRESS_MESSAGES
    assert sorted(processed) == sorted(sent)
    assert {c for n in range(STRESS_WORKERS) for c in results[f"worker{n}"]["counts"]} == {1}
    assert sum(1 for n in range(STRESS_WORKERS) if results[f"worker{n}"]["ids"]) > 1
    assert results["web"]["polls"] > 0
    assert sorted(results["web"]["replies"]) == sorted(sent)
    assert queue.stats().visible == queue.stats().in_flight == 0
    assert elapsed_s < 20, f"2,000 messages took {elapsed_s:.1f} s"
    # the parent's own connection still works after all that forking
    assert queue.receive(max_messages=1) == []


def _forked_receive(queue: Queue, out: Path) -> None:
    batch = queue.receive(max_messages=10, wait_time_s=2)
    queue.delete_batch([m.receipt for m in batch])
    queue.send("from child")
    _record(out, bodies=[m.body for m in batch], pid=os.getpid())


def test_queue_object_survives_fork(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite://{tmp_path}/queue.db", name="input")
    queue.send_batch(["a", "b"])
    child = FORK.Process(target=_forked_receive, args=(queue, tmp_path / "child.json"))
    child.start()
    child.join(timeout=20)
    assert child.exitcode == 0
    report = json.loads((tmp_path / "child.json").read_text())
    assert sorted(report["bodies"]) == ["a", "b"]
    assert [m.body for m in queue.receive(max_messages=10, wait_time_s=2)] == ["from child"]


def test_a_send_from_another_process_wakes_a_waiting_receiver(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite://{tmp_path}/queue.db", name="input")

    def send_later() -> None:
        time.sleep(0.5)
        queue.send("hi")

    sender = FORK.Process(target=send_later)
    started = time.monotonic()
    sender.start()
    batch = queue.receive(max_messages=1, wait_time_s=10)
    elapsed_s = time.monotonic() - started
    sender.join(timeout=10)
    assert [m.body for m in batch] == ["hi"]
    assert elapsed_s < 2.0


def test_a_long_write_lock_elsewhere_is_waited_out_not_raised(tmp_path: Path) -> None:
    # given: another connection holds the write lock far longer than the busy timeout
    queue = open_queue(f"sqlite://{tmp_path}/queue.db", busy_timeout_s=0.05)
    locked, release = threading.Event(), threading.Event()

    def hog() -> None:
        conn = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hog)
    holder.start()
    assert locked.wait(5)
    threading.Timer(1.0, release.set).start()
    # when: we write meanwhile; then: it waits for the lock, and succeeds
    started = time.monotonic()
    queue.send_batch(["a", "b"])
    (message,) = queue.receive(max_messages=1)
    queue.delete(message.receipt)
    assert time.monotonic() - started >= 0.9
    holder.join()
    assert queue.stats().visible == 1


# Many threads -----------------------------------------------------------------------


def test_a_waiting_receiver_does_not_block_other_threads(tmp_path: Path) -> None:
    """The web tier sends from a thread pool while its reply reader waits on a receive."""
    queue = open_queue(f"sqlite://{tmp_path}/queue.db", name="input")
    replies = queue.sibling("replies")
    waiter = threading.Thread(target=lambda: replies.receive(max_messages=1, wait_time_s=3))
    waiter.start()
    time.sleep(0.1)
    started = time.monotonic()
    senders = [
        threading.Thread(target=lambda: [queue.send("x") for _ in range(50)]) for _ in range(8)
    ]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    sent_in_s = time.monotonic() - started
    assert waiter.is_alive(), "the receive should still be waiting"
    assert sent_in_s < 2.0, f"400 sends took {sent_in_s:.2f} s behind a waiting receive"
    assert queue.stats().visible == 400
    waiter.join()


def test_one_receive_fills_a_batch_of_sixteen(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite://{tmp_path}/queue.db")
    queue.send_batch([str(i) for i in range(25)])
    assert len(queue.receive(max_messages=16)) == 16
    assert len(queue.receive(max_messages=16)) == 9


def test_batches_larger_than_one_statement_go_whole(tmp_path: Path) -> None:
    # given: 250 messages sent in one batch (sent, taken and deleted 100 rows per statement)
    queue = open_queue(f"sqlite://{tmp_path}/queue.db")
    ids = queue.send_batch([str(i) for i in range(250)])
    # when: all are taken in one receive, and a stale receipt is mixed into the delete
    batch = queue.receive(max_messages=250)
    stale = f"{batch[0].receipt.partition('.')[0]}.{'0' * 16}"
    queue.delete_batch([stale])
    # then: every one arrived once, with a receipt of its own, and the stale one was ignored
    assert sorted(m.id for m in batch) == sorted(ids)
    assert len({m.receipt for m in batch}) == 250
    assert queue.stats().in_flight == 250
    queue.delete_batch([m.receipt for m in batch])
    stats = queue.stats()
    assert stats.visible == stats.in_flight == 0


def test_zero_visibility_receive_does_not_return_a_message_twice(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite://{tmp_path}/queue.db", max_receives=1)
    queue.send_batch(["a", "b", "c"])
    first = queue.receive(max_messages=1, visibility_timeout_s=0)
    queue.send("d")
    # One message is dead-lettered on the way, which makes the receive look again.
    batch = queue.receive(max_messages=10, visibility_timeout_s=0)
    assert len({m.id for m in batch}) == len(batch) == 3
    assert first[0].id not in {m.id for m in batch}
    assert queue.stats().dead_lettered == 1


# Files and URLs -----------------------------------------------------------------------


def test_queues_share_one_file_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "data" / "queue.db"  # the directory is created
    first = open_queue(f"sqlite://{path}?name=jobs")
    first.sibling("replies-1").send("reply")
    first.send("job")
    first.close()
    reopened = open_queue(f"sqlite://{path}", name="jobs")
    assert isinstance(reopened, SqliteQueue)
    assert [m.body for m in reopened.receive(max_messages=5)] == ["job"]
    assert [m.body for m in reopened.sibling("replies-1").receive(max_messages=5)] == ["reply"]
    assert reopened.url == f"sqlite://{path.resolve()}?name=jobs"


def test_destroyed_queue_starts_empty_when_reopened(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite://{tmp_path}/queue.db", name="replies-1")
    queue.send("old")
    queue.destroy()
    assert queue.sibling("replies-1").receive(max_messages=1) == []


def test_relative_url_and_wal_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    queue = open_queue("sqlite://state/queue.db", poll_interval_s=0.02, busy_timeout_s=1)
    queue.send("x")
    assert (tmp_path / "state" / "queue.db").is_file()
    assert (tmp_path / "state" / "queue.db-wal").exists()


def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "queue.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a database"):
        open_queue(f"sqlite://{tmp_path}/queue.db")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///tmp/dir/"])
def test_url_without_a_file_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="names no database file"):
        open_queue(url)


def test_unknown_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="accepted: max_receives, poll_interval_s"):
        open_queue(f"sqlite://{tmp_path}/q.db", region="eu-west-1")
