"""Queues in one SQLite file, safe across processes and threads (``sqlite://`` URLs).

Every queue in the file (input, replies, dead letters) is a set of rows in one table.
Writers take short ``BEGIN IMMEDIATE`` transactions in WAL mode, so readers never block
and writers queue up briefly; SQLITE_BUSY is retried with jittered backoff and never
reaches the caller. Each process opens its own connection on first use (a connection
must not cross a fork); threads share it behind a lock that is never held while waiting.

A waiting ``receive`` sleeps in short steps and rechecks only when ``PRAGMA data_version``
(another process committed) or the local write counter (this process committed) moved,
or when an in-flight message's visibility is due to expire.
"""

from __future__ import annotations

import os
import random
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from dlaas.errors import QueueError, ReceiptInvalid
from dlaas.queue import validate_queue_name
from dlaas.queue.base import (
    DEFAULT_MAX_RECEIVES,
    DLQ_SUFFIX,
    Message,
    Queue,
    QueueStats,
)

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


def _database(path: Path, busy_timeout_s: float) -> _Database:
    key = (str(path), busy_timeout_s)
    with _DATABASES_LOCK:
        db = _DATABASES.get(key)
        if db is None:
            db = _DATABASES[key] = _Database(path, busy_timeout_s)
        db.refs += 1
        return db


def _release(db: _Database) -> None:
    with _DATABASES_LOCK:
        db.refs -= 1
        if db.refs > 0:
            return
        _DATABASES.pop((str(db.path), db.busy_timeout_s), None)
    db.close()


class SqliteQueue(Queue):
    """A named queue in a SQLite file; siblings share the file and this process's connection."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str = "dlaas-input",
        *,
        max_receives: int = DEFAULT_MAX_RECEIVES,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.name = validate_queue_name(name)
        self.url = f"sqlite://{self.path}?name={self.name}"
        self.max_receives = max_receives
        self.poll_interval_s = float(poll_interval_s)
        self.busy_timeout_s = float(busy_timeout_s)
        self._dlq_name = self.name + DLQ_SUFFIX
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueError(
                f"cannot create the directory for sqlite queue {self.path}: {exc.strerror}; "
                "choose a writable path with --queue sqlite:///path/queue.db"
            ) from exc
        self._db = _database(self.path, self.busy_timeout_s)
        self._closed = False
        self._db.read(lambda c: None)  # open now, so a bad path fails at start, not mid-job

    # Sending -----------------------------------------------------------------

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        now = time.time()
        rows = [(self.name, uuid.uuid4().hex, str(body), now, now) for body in bodies]
        if rows:
            self._db.write(
                lambda c: c.executemany(
                    "INSERT INTO messages (queue, id, body, sent_at, visible_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                ),
                self.name,
            )
        return [row[1] for row in rows]

    # Receiving ---------------------------------------------------------------

    def _receive(
        self, max_messages: int, wait_time_s: float, visibility_timeout_s: float
    ) -> list[Message]:
        deadline = time.monotonic() + wait_time_s
        while True:
            seen = self._db.version(self.name)
            next_visible_at = self._next_visible_at()
            now = time.time()
            if next_visible_at is not None and next_visible_at <= now:
                messages = self._db.write(
                    lambda c: self._take(c, max_messages, visibility_timeout_s),
                    self.name,
                    self._dlq_name,
                )
                if messages:
                    return messages
                continue  # another receiver won them (or they were dead-lettered): look again
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return []
            if next_visible_at is not None:
                remaining_s = min(remaining_s, next_visible_at - now)
            self._db.wait_for_change(self.name, seen, remaining_s, self.poll_interval_s)

    def _next_visible_at(self) -> float | None:
        """When the next message is (or was) visible: a cheap read taken before the write lock."""
        value: float | None = self._db.read(
            lambda c: c.execute(
                "SELECT MIN(visible_at) FROM messages WHERE queue = ?", (self.name,)
            ).fetchone()[0]
        )
        return value

    def _take(
        self, conn: sqlite3.Connection, max_messages: int, visibility_timeout_s: float
    ) -> list[Message]:
        """Deliver up to ``max_messages`` visible messages, dead-lettering exhausted ones."""
        now = time.time()
        messages: list[Message] = []
        taken: set[int] = set()  # with a zero timeout, delivered rows still match the query
        dead_lettering = not self.name.endswith(DLQ_SUFFIX)  # like SQS: a DLQ has no DLQ
        while len(messages) < max_messages:
            rows = conn.execute(
                "SELECT seq, id, body, sent_at, receive_count FROM messages"
                " WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                (self.name, now, max_messages - len(messages) + len(taken)),
            ).fetchall()
            rows = [row for row in rows if row[0] not in taken]
            dead = [row for row in rows if dead_lettering and row[4] >= self.max_receives]
            live = [row for row in rows if not (dead_lettering and row[4] >= self.max_receives)]
            if dead:
                conn.executemany(
                    "UPDATE messages SET queue = ?, visible_at = ?, receive_count = 0,"
                    " receipt = NULL WHERE seq = ?",
                    [(self._dlq_name, now, row[0]) for row in dead],
                )
            updates = []
            for seq, message_id, body, sent_at, receive_count in live:
                receipt = f"{seq}.{secrets.token_hex(8)}"
                updates.append((now + visibility_timeout_s, receipt, seq))
                messages.append(Message(message_id, body, receipt, receive_count + 1, sent_at))
                taken.add(seq)
            if updates:
                conn.executemany(
                    "UPDATE messages SET visible_at = ?, receive_count = receive_count + 1,"
                    " receipt = ? WHERE seq = ?",
                    updates,
                )
            if not dead:
                break  # the query gave all it had; only dead-lettering leaves room to refill
        return messages

    # Acknowledging -------------------------------------------------------------

    def delete(self, receipt: str) -> None:
        self.delete_batch([receipt])

    def delete_batch(self, receipts: Sequence[str]) -> None:
        keys = [key for key in (self._parse(r) for r in receipts) if key is not None]
        if keys:
            self._db.write(
                lambda c: c.executemany(
                    "DELETE FROM messages WHERE seq = ? AND queue = ? AND receipt = ?", keys
                )
            )

    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        key = self._parse(receipt)
        updated = 0
        if key is not None:
            seq, queue, full = key
            updated = self._db.write(
                lambda c: (
                    c.execute(
                        "UPDATE messages SET visible_at = ?"
                        " WHERE seq = ? AND queue = ? AND receipt = ?",
                        (time.time() + visibility_timeout_s, seq, queue, full),
                    ).rowcount
                ),
                self.name,
            )
        if updated == 0:
            raise ReceiptInvalid(
                f"receipt {receipt!r} on queue {self.name!r} is stale: the message was "
                "deleted or delivered again since; stop working on it"
            )

    def _parse(self, receipt: str) -> tuple[int, str, str] | None:
        seq, _, token = receipt.partition(".")
        if not seq.isdigit() or not token:
            return None  # not one of ours: treated like any stale receipt
        return int(seq), self.name, receipt

    # Inspecting and managing -------------------------------------------------------

    def stats(self) -> QueueStats:
        now = time.time()
        visible, in_flight, oldest, dead = self._db.read(
            lambda c: c.execute(
                # One statement, so one snapshot; each part is a range scan of an index.
                "SELECT"
                " (SELECT COUNT(*) FROM messages WHERE queue = :q AND visible_at <= :now),"
                " (SELECT COUNT(*) FROM messages WHERE queue = :q AND visible_at > :now),"
                " (SELECT MIN(sent_at) FROM messages WHERE queue = :q),"
                " (SELECT COUNT(*) FROM messages WHERE queue = :dlq)",
                {"q": self.name, "dlq": self._dlq_name, "now": now},
            ).fetchone()
        )
        return QueueStats(
            visible=int(visible),
            in_flight=int(in_flight),
            oldest_age_s=0.0 if oldest is None else max(0.0, now - float(oldest)),
            dead_lettered=int(dead),
        )

    def sibling(self, name: str) -> SqliteQueue:
        return SqliteQueue(
            self.path,
            name,
            max_receives=self.max_receives,
            poll_interval_s=self.poll_interval_s,
            busy_timeout_s=self.busy_timeout_s,
        )

    def purge(self) -> None:
        self._db.write(lambda c: c.execute("DELETE FROM messages WHERE queue = ?", (self.name,)))

    def close(self) -> None:
        """Drop this handle; the shared connection closes with the last handle in the process."""
        if not self._closed:
            self._closed = True
            _release(self._db)
