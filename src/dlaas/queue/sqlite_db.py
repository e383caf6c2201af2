"""The SQLite file behind ``sqlite://`` queues: one connection per (file, process).

Writers take short ``BEGIN IMMEDIATE`` transactions in WAL mode, so readers never block
and writers queue up briefly; SQLITE_BUSY is retried with jittered backoff and never
reaches the caller. Each process opens its own connection on first use (a connection
must not cross a fork); threads share it behind a lock that is never held while waiting.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dlaas.errors import QueueError

T = TypeVar("T")

DEFAULT_POLL_INTERVAL_S = 0.01
DEFAULT_BUSY_TIMEOUT_S = 0.5
GIVE_UP_AFTER_S = 60.0  # a write lock held this long means a stuck process, not contention

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
        # Per queue name, bumped on every commit in this process that changed its rows;
        # a waiting receiver wakes only for its own queue (other processes: data_version).
        self._local_versions: dict[str, int] = {}

    def after_fork_in_child(self) -> None:
        if self._conn is not None:
            _INHERITED.append(self._conn)  # never close (or even free) a parent's connection
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
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
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
                        return work(conn)
                    changes_before = conn.total_changes
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = work(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                    if touched and conn.total_changes != changes_before:
                        self._notify(touched)
                    return result
                except sqlite3.Error as exc:
                    if not _is_busy(exc):
                        raise QueueError(
                            f"sqlite queue {self.path} failed: {exc}; check that the file is a "
                            "dlaas queue database on a local, writable disk"
                        ) from exc
            # Sleep without the lock so other threads carry on meanwhile.
            if time.monotonic() >= give_up_at:
                raise QueueError(
                    f"sqlite queue {self.path} stayed busy for {GIVE_UP_AFTER_S:.0f} s; another "
                    "process holds a write transaction - look for a stuck process"
                )
            time.sleep(random.uniform(0.5, 1.0) * backoff_s)
            backoff_s = min(backoff_s * 2, 0.05)

    def _notify(self, touched: tuple[str, ...]) -> None:
        with self._changed:
            for name in touched:
                self._local_versions[name] = self._local_versions.get(name, 0) + 1
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

        Commits in this process wake us at once; other processes' commits are noticed by
        checking ``PRAGMA data_version`` every ``poll_s``.
        """
        end = time.monotonic() + timeout_s
        next_check = time.monotonic() + poll_s
        while True:
            now = time.monotonic()
            if now >= end:
                return
            with self._changed:
                if self._local_versions.get(name, 0) != seen[0]:
                    return
                self._changed.wait(min(next_check, end) - now)
                if self._local_versions.get(name, 0) != seen[0]:
                    return
            if time.monotonic() >= next_check:
                if self._data_version() != seen[1]:
                    return
                next_check = time.monotonic() + poll_s


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
