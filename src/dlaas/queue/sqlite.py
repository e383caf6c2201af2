"""Queues in one SQLite file, safe across processes and threads (``sqlite://`` URLs).

Every queue in the file (input, replies, dead letters) is a set of rows in one table.
Writers take short ``BEGIN IMMEDIATE`` transactions in WAL mode, so readers never block
and writers queue up briefly; SQLITE_BUSY is retried with jittered backoff and never
reaches the caller. Each process opens its own connection on first use (a connection
must not cross a fork); threads share it behind a lock that is never held while waiting.

A waiting ``receive`` sleeps and rechecks only when this process committed to its queue,
another process's commit to it sent a wake-up (sqlite_wake.py), ``PRAGMA data_version``
moved (checked every ``poll_interval_s``, the fallback), or an in-flight message's
visibility is due to expire.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import TypeVar

from dlaas.errors import QueueError, ReceiptInvalid
from dlaas.queue.base import (
    DEFAULT_MAX_RECEIVES,
    Message,
    Queue,
    QueueStats,
    validate_queue_name,
)
from dlaas.queue.sqlite_db import (
    DEFAULT_BUSY_TIMEOUT_S,
    DEFAULT_POLL_INTERVAL_S,
    open_database,
    release,
)

T = TypeVar("T")


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
        self._dlq_name = self.dead_letter_name
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueError(
                f"cannot create the directory for sqlite queue {self.path}: {exc.strerror}; "
                "choose a writable path with --queue sqlite:///path/queue.db"
            ) from exc
        self._db = open_database(self.path, self.busy_timeout_s)
        self._closed = False
        self._db.read(lambda c: None)  # open now, so a bad path fails at start, not mid-job

    # Sending -----------------------------------------------------------------

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        now = time.time()
        rows = [(self.name, secrets.token_hex(16), str(body), now, now) for body in bodies]

        def insert(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(rows):  # one statement per chunk: see _chunks
                conn.execute(
                    "INSERT INTO messages (queue, id, body, sent_at, visible_at) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk)),
                    [value for row in chunk for value in row],
                )

        if rows:
            self._db.write(insert, self.name)
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
        while len(messages) < max_messages:
            rows = conn.execute(
                "SELECT seq, id, body, sent_at, receive_count FROM messages"
                " WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                (self.name, now, max_messages - len(messages) + len(taken)),
            ).fetchall()
            rows = [row for row in rows if row[0] not in taken]
            dead = [row for row in rows if self.should_dead_letter(row[4])]
            live = [row for row in rows if not self.should_dead_letter(row[4])]
            if dead:
                conn.executemany(
                    "UPDATE messages SET queue = ?, visible_at = ?, receive_count = 0,"
                    " receipt = NULL WHERE seq = ?",
                    [(self._dlq_name, now, row[0]) for row in dead],
                )
            # One token per take: each receipt is "<seq>.<token>", unique by its seq and
            # unguessable by its token, and one UPDATE sets them all.
            token = secrets.token_hex(8)
            for seq, message_id, body, sent_at, receive_count in live:
                receipt = f"{seq}.{token}"
                messages.append(Message(message_id, body, receipt, receive_count + 1, sent_at))
                taken.add(seq)
            for chunk in _chunks([row[0] for row in live]):
                conn.execute(
                    "UPDATE messages SET visible_at = ?, receive_count = receive_count + 1,"
                    f" receipt = seq || '.' || ? WHERE seq IN ({_marks(chunk)})",
                    (now + visibility_timeout_s, token, *chunk),
                )
            if not dead:
                break  # the query gave all it had; only dead-lettering leaves room to refill
        return messages

    # Acknowledging -------------------------------------------------------------

    def delete(self, receipt: str) -> None:
        self.delete_batch([receipt])

    def delete_batch(self, receipts: Sequence[str]) -> None:
        keys = [key for key in (self._parse(r) for r in receipts) if key is not None]

        def delete(conn: sqlite3.Connection) -> None:
            # A receipt names its own seq, so "seq in the set and receipt in the set" is
            # "this seq with this receipt", pair by pair, in one statement per chunk.
            for chunk in _chunks(keys):
                conn.execute(
                    f"DELETE FROM messages WHERE queue = ? AND seq IN ({_marks(chunk)})"
                    f" AND receipt IN ({_marks(chunk)})",
                    (self.name, *(k[0] for k in chunk), *(k[2] for k in chunk)),
                )

        if keys:
            self._db.write(delete)

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
            release(self._db)


def _chunks(items: Sequence[T], size: int = 100) -> list[Sequence[T]]:
    """``items`` in runs of at most ``size``, for one statement each.

    One multi-row statement instead of ``executemany``: every statement or row steps in C
    with the GIL released, and beside a busy thread each release can cost the 5 ms switch
    interval while this transaction holds the queue's write lock (docs/performance.md).
    100 rows of 5 values stay well under SQLite's oldest limit of 999 variables.
    """
    return [items[i : i + size] for i in range(0, len(items), size)]


def _marks(chunk: Sized) -> str:
    return ", ".join("?" * len(chunk))
