"""Cross-process wake-ups of sqlite queues: who listens, who is woken, and the poll fallback.

Each receiver here polls ``PRAGMA data_version`` only every 60 s, longer than it waits,
so a message that arrives while it waits can only reach it through a wake-up datagram.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from dlaas.queue import sqlite_db
from dlaas.queue.sqlite import SqliteQueue
from dlaas.queue.sqlite_wake import SUPPORTED, WakeListener, WakeSender

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="wake-ups use Linux abstract sockets")

FORK = multiprocessing.get_context("fork")
NO_POLL_S = 60.0


def _listeners(path: Path) -> list[tuple[str, str]]:
    """The listener rows; none while no process has created the table yet."""
    with closing(sqlite3.connect(path)) as conn:
        try:
            rows = conn.execute("SELECT queue, address FROM listeners ORDER BY queue").fetchall()
        except sqlite3.OperationalError:
            return []
    return [(str(q), str(a)) for q, a in rows]


def _wait_for_listeners(path: Path, count: int, timeout_s: float = 10.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _listeners(path)
        if len(rows) >= count:
            return rows
        time.sleep(0.02)
    raise AssertionError(f"expected {count} listener rows, found {_listeners(path)}")


def _send_when_listened(path: Path, name: str, body: str) -> None:
    queue = SqliteQueue(path, "sender")
    _wait_for_listeners(path, 1)
    queue.sibling(name).send(body)
    queue.close()


def test_a_send_from_another_process_wakes_a_receiver_that_does_not_poll(tmp_path: Path) -> None:
    # given: a receiver that would not look again for a minute
    path = tmp_path / "queue.db"
    queue = SqliteQueue(path, "input", poll_interval_s=NO_POLL_S)
    sender = FORK.Process(target=_send_when_listened, args=(path, "input", "hi"))
    sender.start()
    # when: another process sends while it waits
    batch = queue.receive(max_messages=1, wait_time_s=20)
    sender.join(timeout=10)
    # then: the wake-up delivered it long before any poll would have
    assert [m.body for m in batch] == ["hi"]
    assert sender.exitcode == 0
    queue.close()


def _receive_forever(path: str) -> None:
    SqliteQueue(path, "input", poll_interval_s=NO_POLL_S).receive(wait_time_s=60)


def test_a_dead_listener_is_dropped_by_the_next_send(tmp_path: Path) -> None:
    # given: a process that listened on "input" and was killed without closing anything
    path = tmp_path / "queue.db"
    child = FORK.Process(target=_receive_forever, args=(str(path),))
    child.start()
    (row,) = _wait_for_listeners(path, 1)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    # when: a message is sent to "input"
    queue = SqliteQueue(path, "input")
    queue.send("x")
    # then: its wake-up is refused and the stale row removed; the message is still there
    assert row not in _listeners(path)
    assert [m.body for m in queue.receive()] == ["x"]
    queue.close()


def test_a_listener_row_is_removed_when_the_queue_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    queue = SqliteQueue(path, "input", poll_interval_s=NO_POLL_S)
    assert queue.receive(wait_time_s=0.05) == []
    assert [name for name, _ in _listeners(path)] == ["input"]
    queue.close()
    assert _listeners(path) == []


def test_a_writer_that_sends_no_wake_up_is_still_seen_by_the_poll(tmp_path: Path) -> None:
    # given: a receiver on the default poll, and a writer that knows nothing of listeners
    # (an older dlaas, or a tool writing to the file)
    path = tmp_path / "queue.db"
    queue = SqliteQueue(path, "input")
    assert queue.receive(wait_time_s=0.05) == []

    def insert() -> None:
        time.sleep(0.3)
        with closing(sqlite3.connect(path)) as conn, conn:
            now = time.time()
            conn.execute(
                "INSERT INTO messages (queue, id, body, sent_at, visible_at)"
                " VALUES ('input', ?, 'plain', ?, ?)",
                (uuid.uuid4().hex, now, now),
            )

    writer = FORK.Process(target=insert)
    writer.start()
    # when / then: the data_version poll finds the row
    batch = queue.receive(wait_time_s=20)
    writer.join(timeout=10)
    assert [m.body for m in batch] == ["plain"]
    queue.close()


def _listen_then_leave(path: str) -> None:
    queue = SqliteQueue(path, "input", poll_interval_s=NO_POLL_S)
    queue.receive(wait_time_s=0.05)
    queue.close()


def test_a_forked_child_listens_on_its_own_and_leaves_the_parents_listener_alone(
    tmp_path: Path,
) -> None:
    # given: a parent that listens, and a child forked from it that listens and exits
    path = tmp_path / "queue.db"
    queue = SqliteQueue(path, "input", poll_interval_s=NO_POLL_S)
    assert queue.receive(wait_time_s=0.05) == []
    (parent_row,) = _listeners(path)
    child = FORK.Process(target=_listen_then_leave, args=(str(path),))
    child.start()
    child.join(timeout=20)
    assert child.exitcode == 0
    # then: the parent's row is still there and still wakes it; the child's (it exited
    # holding a reference inherited from the parent) is dropped by that send
    assert parent_row in _listeners(path)
    sender = FORK.Process(target=_send_when_listened, args=(path, "input", "after the child"))
    sender.start()
    batch = queue.receive(max_messages=1, wait_time_s=20)
    sender.join(timeout=10)
    assert [m.body for m in batch] == ["after the child"]
    assert _listeners(path) == [parent_row]
    queue.close()


def test_a_commit_wakes_only_threads_waiting_on_its_queue(tmp_path: Path) -> None:
    # Given a thread of this process waiting on queue "replies"
    path = tmp_path / "q.db"
    replies = SqliteQueue(path, "replies", poll_interval_s=NO_POLL_S)
    work = SqliteQueue(path, "work", poll_interval_s=NO_POLL_S)
    db = replies._db
    wakes = 0
    real_notify_all = db._changed.notify_all

    def counted() -> None:
        nonlocal wakes
        wakes += 1
        real_notify_all()

    db._changed.notify_all = counted
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.extend(replies.receive(1, 5.0)))
    waiter.start()
    deadline = time.monotonic() + 5
    while not db._waiting.get(replies.name) and time.monotonic() < deadline:
        time.sleep(0.01)

    # When another queue in the same file gets a message, then its own queue does
    work.send("task")
    assert wakes == 0 and waiter.is_alive()
    replies.send("result")
    waiter.join(5)

    # Then only the second commit woke it, and it got its message at once
    assert wakes == 1 and len(got) == 1
    assert db._waiting[replies.name] == 0
    replies.close()
    work.close()


def _data_version_checks(queue: SqliteQueue, wait_time_s: float) -> int:
    """How many times an empty ``receive`` of ``wait_time_s`` read ``PRAGMA data_version``."""
    db = queue._db
    real = db._data_version
    checks = 0

    def counted() -> int:
        nonlocal checks
        checks += 1
        return real()

    db._data_version = counted  # type: ignore[method-assign]
    try:
        assert queue.receive(wait_time_s=wait_time_s) == []
    finally:
        del db._data_version
    return checks


def test_while_wake_ups_arrive_the_poll_only_backs_them_up(tmp_path: Path) -> None:
    # given: a receiver on the default 10 ms poll, listening for wake-ups
    queue = SqliteQueue(tmp_path / "queue.db", "input")
    assert queue.receive(wait_time_s=0.05) == []
    # when: it waits 0.5 s on an empty queue
    checks = _data_version_checks(queue, 0.5)
    # then: it looked every 0.1 s (WAKE_BACKUP_POLL_S), not every 10 ms
    assert 1 <= checks <= 7, checks
    queue.close()


def test_a_process_whose_wake_ups_were_dropped_polls_at_its_own_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a listening receiver whose row a writer then dropped, as a writer does when its
    # datagram is refused (another network namespace, say)
    path = tmp_path / "queue.db"
    queue = SqliteQueue(path, "input")
    assert queue.receive(wait_time_s=0.05) == []
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM listeners")
    monkeypatch.setattr(sqlite_db, "RELISTEN_S", 0.0)
    # when: it waits again
    checks = _data_version_checks(queue, 0.5)
    # then: it listens again, but polls at its own 10 ms, since wake-ups did not reach it
    assert [name for name, _ in _listeners(path)] == ["input"]
    assert checks >= 15, checks
    queue.close()


def test_a_listener_reads_its_socket_only_while_a_receiver_waits() -> None:
    # given: a process's listener for "input", with no receiver waiting (a busy worker)
    woken: list[str] = []
    listener = WakeListener(woken.append)
    listener.names.add("input")
    sender = WakeSender()
    try:
        # when: twenty commits to "input" (and one to a queue it does not listen for) wake it
        for _ in range(20):
            assert sender.send([("input", listener.address)]) == []
        sender.send([("other", listener.address)])
        time.sleep(0.2)
        # then: its thread slept through them; they wait in the socket
        assert woken == []
        # when: a receiver starts waiting
        listener.wanted(True)
        deadline = time.monotonic() + 5
        while not woken and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # then: the waiting receiver is woken once for all twenty
        assert woken == ["input"]
        # and later wake-ups reach it at once while it waits
        sender.send([("input", listener.address)])
        deadline = time.monotonic() + 5
        while len(woken) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert woken == ["input", "input"]
    finally:
        sender.close()
        listener.close()
