"""Cross-process wake-ups for ``sqlite://`` queues: a datagram instead of a poll.

A process that waits on a queue binds one datagram socket (Linux's abstract namespace,
so no file is left behind by a crash) and lists its address in the database's
``listeners`` table. A writer that commits to that queue reads the table in the same
transaction and, after the commit, sends each listener the queue's name; the listener's
thread wakes the receivers waiting in its process. A listener that is gone (its process
died) is dropped when a send to it is refused.

Wake-ups only shorten waits. Receivers still check ``PRAGMA data_version`` on their poll
interval, so a lost datagram, a writer from an older version, or a platform without
abstract sockets costs latency, never a message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterable

LISTENERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS listeners (
    queue TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (queue, address)
) WITHOUT ROWID;
"""
SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX")
MAX_NAME_BYTES = 512  # queue names are at most 80 ASCII characters; room to spare
_GONE = (errno.ECONNREFUSED, errno.ENOENT)


class WakeListener:
    """One process's socket for wake-ups; ``on_wake(name)`` runs on its thread.

    The thread reads the socket only while a receiver of this process waits
    (``wanted``). A busy worker never waits, and each of the web tier's enqueues would
    otherwise wake its thread, preempting inference, for nothing. What arrives meanwhile
    stays in the socket and is read when a receiver next waits: that receiver wakes once,
    looks again, and waits on. A full socket refuses further datagrams, which its senders
    take as "awake anyway" (a receiver that waits finds the queued ones first).
    """

    def __init__(self, on_wake: Callable[[str], None]) -> None:
        self.address = f"dlaas-wake-{uuid.uuid4().hex}"
        self.names: set[str] = set()  # the queues this process listens for
        self._on_wake = on_wake
        self._pid = os.getpid()
        self._closed = False
        self._wanted = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind("\0" + self.address)
        except OSError:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._run, name="sqlite-wake", daemon=True)
        self._thread.start()

    def wanted(self, waiting: bool) -> None:
        """Whether a receiver of this process waits, so wake-ups are worth reading now."""
        if waiting:
            self._wanted.set()
        else:
            self._wanted.clear()

    def _run(self) -> None:
        while not self._closed:
            self._wanted.wait()
            try:
                names = {self._sock.recv(MAX_NAME_BYTES)}
                names |= self._pending()
            except OSError:
                return
            for data in names:
                name = data.decode("utf-8", "replace")
                if name in self.names:  # anything else is not ours to act on
                    self._on_wake(name)

    def _pending(self) -> set[bytes]:
        """The datagrams already waiting in the socket: a receiver wakes once for them all."""
        found: set[bytes] = set()
        for _ in range(1024):
            try:
                found.add(self._sock.recv(MAX_NAME_BYTES, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
        return found

    def close(self) -> None:
        """Stop the thread and free the address (in the process that opened it)."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            self._sock.close()  # a forked child's copy: the parent's thread owns the socket
            return
        self._wanted.set()  # let a parked thread run to its end
        with contextlib.suppress(OSError):
            self._sock.sendto(b"", "\0" + self.address)  # unblock the thread's recv
        self._thread.join(timeout=1.0)
        self._sock.close()


class WakeSender:
    """Sends wake-ups; one unbound socket per process, opened on first use."""

    def __init__(self) -> None:
        self._pid = -1
        self._sock: socket.socket | None = None

    def send(self, targets: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Wake each ``(queue, address)``; return the pairs whose listener is gone."""
        gone = []
        for name, address in targets:
            try:
                self._socket().sendto(name.encode(), socket.MSG_DONTWAIT, "\0" + address)
            except OSError as exc:
                if exc.errno in _GONE:
                    gone.append((name, address))
                # EAGAIN: the listener has wake-ups queued already, so it is awake anyway.
        return gone

    def _socket(self) -> socket.socket:
        if self._pid != os.getpid() or self._sock is None:
            self.close()  # in a forked child, closes only the child's copy
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._pid = os.getpid()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
