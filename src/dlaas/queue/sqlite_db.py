"""The SQLite file behind ``sqlite://`` queues: one connection per (file, process).

Writers take short ``BEGIN IMMEDIATE`` transactions in WAL mode, so readers never block
and writers queue up briefly; SQLITE_BUSY is retried with jittered backoff and never
reaches the caller. Each process opens its own connection on first use (a connection
must not cross a fork); threads share it behind a lock that is never held while waiting.
A commit wakes waiting receivers in other processes with a datagram (sqlite_wake.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dlaas.errors import QueueError
from dlaas.queue import sqlite_size
from dlaas.queue.sqlite_wake import LISTENERS_SCHEMA, SUPPORTED, WakeListener, WakeSender

T = TypeVar("T")

DEFAULT_POLL_INTERVAL_S = 0.01
# While wake-ups reach this process, the poll only backs up a lost one. At 10 ms it woke
# every waiting thread 100 times a second under load, when other processes commit all the
# time: ~0.15 ms of the web tier's CPU per image in its reply reader alone.
WAKE_BACKUP_POLL_S = 0.1
DEFAULT_BUSY_TIMEOUT_S = 0.5
GIVE_UP_AFTER_S = 60.0  # a write lock held this long means a stuck process, not contention
# How often a waiting process checks that its listener row is still there (a writer that
# could not reach it, e.g. from another network namespace, may have dropped it).
RELISTEN_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (queue, sent_at);
"""


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return True
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class _Database:
    """One connection per (file, process), shared by every queue object on that file."""

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.refs = 0
        self._reset()

    def _reset(self) -> None:
        """Forget the connection and locks; called at start and in a forked child."""
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(threading.Lock())
        # Per queue name, bumped on every commit in this process that changed its rows and
        # on every wake-up from another process's commit; a waiting receiver wakes only for
        # its own queue (and checks data_version in case a wake-up was lost).
        self._local_versions: dict[str, int] = {}
        # Threads of this process waiting on each queue: a commit wakes them only if its
        # queue has one (the web tier's enqueue used to wake its idle reply reader each time).
        self._waiting: dict[str, int] = {}
        self._listener: WakeListener | None = None
        self._listen_lock = threading.Lock()
        self._listening: dict[str, float] = {}  # queue name -> when its row was last checked
        self._wakes_supported = SUPPORTED
        # False once a writer dropped one of our listener rows: its datagrams did not reach
        # us (another network namespace, say), so waits poll at the queue's own interval.
        self._wakes_arrive = True
        self._sender = WakeSender()
        self._size = sqlite_size.SizeKeeper(self.path)

    def after_fork_in_child(self) -> None:
        if self._conn is not None:
            _INHERITED.append(self._conn)  # never close (or even free) a parent's connection
        if self._listener is not None:
            self._listener.close()  # only drops this child's copy of the parent's socket
        self._reset()

    def _connection(self) -> sqlite3.Connection:
        """The calling process's connection; caller holds ``_lock``."""
        if self._pid != os.getpid():
            self.after_fork_in_child()  # a fork without the at-fork hook (defensive)
        if self._conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
            try:
                sqlite_size.configure(conn)  # first: auto_vacuum only takes on a new file
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA + LISTENERS_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        listener = self._listener
        if listener is not None and self._pid == os.getpid():
            self._listener = None
            with contextlib.suppress(QueueError):  # else a writer drops it, once refused
                self.write(
                    lambda c: c.execute(
                        "DELETE FROM listeners WHERE address = ?", (listener.address,)
                    )
                )
            listener.close()
        self._sender.close()
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def write(self, work: Callable[[sqlite3.Connection], T], *touched: str) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction, retrying while the file is busy.

        Receivers in this process waiting on a ``touched`` queue wake when it commits.
        """
        return self._retry(work, touched)

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` outside any transaction (each statement is its own snapshot)."""
        return self._retry(work, None)

    def _retry(self, work: Callable[[sqlite3.Connection], T], touched: tuple[str, ...] | None) -> T:
        give_up_at = time.monotonic() + GIVE_UP_AFTER_S
        backoff_s = 0.002
        while True:
            with self._lock:
                try:
                    conn = self._connection()
                    if touched is None:
                        return _settled(work(conn))
                    result, wakes = self._transaction(conn, work, touched)
                except sqlite3.Error as exc:
                    if not _is_busy(exc):
                        raise QueueError(
                            f"sqlite queue {self.path} failed: {exc}; check that the file is a "
                            "dlaas queue database on a local, writable disk"
                        ) from exc
                    wakes = None
            if wakes is not None:
                # After the commit, so a woken receiver finds the rows, and outside the
                # lock, so this process's other threads are not held up meanwhile.
                if wakes:
                    self._wake(wakes)
                return result
            # Sleep without the lock so other threads carry on meanwhile.
            if time.monotonic() >= give_up_at:
                raise QueueError(
                    f"sqlite queue {self.path} stayed busy for {GIVE_UP_AFTER_S:.0f} s; another "
                    "process holds a write transaction - look for a stuck process"
                )
            time.sleep(random.uniform(0.5, 1.0) * backoff_s)
            backoff_s = min(backoff_s * 2, 0.05)

    def _transaction(
        self,
        conn: sqlite3.Connection,
        work: Callable[[sqlite3.Connection], T],
        touched: tuple[str, ...],
    ) -> tuple[T, list[tuple[str, str]]]:
        """Run ``work`` in one transaction; return its result and the listeners to wake."""
        changes_before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = _settled(work(conn))
            changed = bool(touched) and conn.total_changes != changes_before
            wakes = self._listeners_of(conn, touched) if changed else []
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._size.after_commit(conn)
        if changed:
            self._notify(touched)
        return result, wakes

    def _listeners_of(
        self, conn: sqlite3.Connection, touched: tuple[str, ...]
    ) -> list[tuple[str, str]]:
        """Other processes' listeners on the ``touched`` queues (this one is woken locally)."""
        marks = ",".join("?" * len(touched))
        own = self._listener.address if self._listener is not None else ""
        rows = conn.execute(
            f"SELECT queue, address FROM listeners WHERE queue IN ({marks})", touched
        ).fetchall()
        return [(str(name), str(address)) for name, address in rows if address != own]

    def _wake(self, targets: list[tuple[str, str]]) -> None:
        gone = self._sender.send(targets)
        if gone:
            with contextlib.suppress(QueueError):  # the next writer to find them tries again
                self.write(
                    lambda c: c.executemany(
                        "DELETE FROM listeners WHERE queue = ? AND address = ?", gone
                    )
                )

    def _listen(self, name: str) -> bool:
        """Have other processes' commits to ``name`` wake this one; True if that just began.

        Checks the listener row again every ``RELISTEN_S``, in case a writer dropped it.
        """
        if not self._wakes_supported:
            return False
        checked_at = self._listening.get(name)
        now = time.monotonic()
        if checked_at is not None and now - checked_at < RELISTEN_S:
            return False
        with self._listen_lock:
            if self._listener is None:
                try:
                    self._listener = WakeListener(lambda queue: self._notify((queue,)))
                except OSError:
                    self._wakes_supported = False  # e.g. sockets forbidden: poll alone
                    return False
            listener = self._listener
        listener.names.add(name)
        key = (name, listener.address)
        present = self.read(
            lambda c: c.execute(
                "SELECT 1 FROM listeners WHERE queue = ? AND address = ?", key
            ).fetchone()
        )
        if present is None and checked_at is not None:
            self._wakes_arrive = False  # a writer could not reach us: poll as if alone
        if present is None:
            self.write(
                lambda c: c.execute(
                    "INSERT OR IGNORE INTO listeners (queue, address) VALUES (?, ?)", key
                )
            )
        self._listening[name] = now
        return present is None

    def _notify(self, touched: tuple[str, ...]) -> None:
        with self._changed:
            for name in touched:
                self._local_versions[name] = self._local_versions.get(name, 0) + 1
            if any(self._waiting.get(name) for name in touched):
                self._changed.notify_all()

    def _data_version(self) -> int:
        value: int = self.read(lambda c: c.execute("PRAGMA data_version").fetchone()[0])
        return value

    def version(self, name: str) -> tuple[int, int]:
        """Moves when ``name`` changed here, or when any other process committed."""
        return self._local_versions.get(name, 0), self._data_version()

    def wait_for_change(
        self, name: str, seen: tuple[int, int], timeout_s: float, poll_s: float
    ) -> None:
        """Sleep until ``name`` may have changed since ``seen``, or ``timeout_s`` passed.

        Commits in this process wake us at once, and so do other processes' commits through
        their wake-up datagram; ``PRAGMA data_version`` is the fallback should a wake-up be
        lost, checked every ``poll_s`` where wake-ups do not reach this process and every
        ``WAKE_BACKUP_POLL_S`` (at least) where they do.
        """
        if self._listen(name):
            return  # the caller looked before it listened: look again
        if self._listener is not None and self._wakes_arrive:
            poll_s = max(poll_s, WAKE_BACKUP_POLL_S)
        end = time.monotonic() + timeout_s
        next_check = time.monotonic() + poll_s
        while True:
            now = time.monotonic()
            if now >= end:
                return
            with self._changed:
                if self._local_versions.get(name, 0) != seen[0]:
                    return
                self._waiting[name] = self._waiting.get(name, 0) + 1
                if self._listener is not None:  # it reads its socket only while we wait
                    self._listener.wanted(True)
                try:
                    self._changed.wait(min(next_check, end) - now)
                finally:
                    self._waiting[name] -= 1
                    if self._listener is not None and not any(self._waiting.values()):
                        self._listener.wanted(False)  # a busy worker is not woken for nothing
                if self._local_versions.get(name, 0) != seen[0]:
                    return
            if time.monotonic() >= next_check:
                if self._data_version() != seen[1]:
                    return
                next_check = time.monotonic() + poll_s


def _settled(result: T) -> T:
    """Close a cursor that ``work`` returned while the lock is still held.

    Freeing a cursor resets its statement, which the connection's statement cache may
    by then have handed to another thread's query: done outside the lock, that corrupts
    the other query ("bad parameter or other API misuse").
    """
    if isinstance(result, sqlite3.Cursor):
        result.close()
    return result


_DATABASES: dict[tuple[str, float], _Database] = {}
_DATABASES_LOCK = threading.Lock()
_INHERITED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    global _DATABASES_LOCK
    _DATABASES_LOCK = threading.Lock()
    for db in _DATABASES.values():
        db.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def open_database(path: Path, busy_timeout_s: float) -> _Database:
    key = (str(path), busy_timeout_s)
    with _DATABASES_LOCK:
        db = _DATABASES.get(key)
        if db is None:
            db = _DATABASES[key] = _Database(path, busy_timeout_s)
        db.refs += 1
        return db


def release(db: _Database) -> None:
    with _DATABASES_LOCK:
        db.refs -= 1
        if db.refs > 0:
            return
        _DATABASES.pop((str(db.path), db.busy_timeout_s), None)
    db.close()
