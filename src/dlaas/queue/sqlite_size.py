"""Keeping the SQLite queue file small: the WAL is checkpointed and truncated once it
passes a size, and the pages freed by deleted messages go back to the file system.

Without this the write-ahead log grows with the length of a busy spell (readers in other
processes keep SQLite's own passive checkpoints from ever restarting it: 195 MB over
30,000 images), and the database file keeps the size of its largest backlog for ever.
The measured bounds are in docs/api.md ("Retention").
"""

from __future__ import annotations

import os
import sqlite3

WAL_CHECKPOINT_BYTES = 8 * 1024 * 1024  # a WAL past this is checkpointed and truncated
WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024  # what SQLite cuts a WAL back to when it resets it
CHECK_EVERY_COMMITS = 8  # a stat of the WAL every few commits costs nothing measurable
VACUUM_FREE_PAGES = 1024  # 4 MB of free pages: hand them back


def configure(conn: sqlite3.Connection) -> None:
    """On opening, before anything else: incremental vacuum (it takes effect only on a new
    file), the WAL size limit, and checkpoints left to ``SizeKeeper``."""
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    conn.execute("PRAGMA wal_autocheckpoint=0")


class SizeKeeper:
    """Called after each of this process's commits; now and then it shrinks the files."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.wal_path = f"{os.fspath(path)}-wal"
        self.commits = 0

    def after_commit(self, conn: sqlite3.Connection) -> None:
        self.commits += 1
        if self.commits % CHECK_EVERY_COMMITS:
            return
        try:
            if conn.execute("PRAGMA freelist_count").fetchone()[0] >= VACUUM_FREE_PAGES:
                conn.execute("PRAGMA incremental_vacuum").fetchall()
            if os.stat(self.wal_path).st_size < WAL_CHECKPOINT_BYTES:
                return
            # TRUNCATE waits (busy timeout) for the writer lock and for readers to leave
            # the WAL, then empties it. SQLite's own checkpoints are off (configure): run
            # at once by every process they kept each other, and this one, from resetting.
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:  # at least copy what it can; the next check tries TRUNCATE again
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (OSError, sqlite3.OperationalError):
            pass  # busy, or no WAL yet: the next check tries again
