"""The sqlite queue file stays small over a 10,000-image run (docs/api.md, "Retention").

Real processes, as in ``dlaas serve``: two workers take tasks eight at a time and send a
reply for each; this process enqueues 100 jobs of 100 images at once and reads the
replies. A monitor thread records the largest database and WAL files seen.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest

from dlaas.jobs import layout, messages, records
from dlaas.queue.sqlite import SqliteQueue

pytestmark = pytest.mark.slow

IMAGES = 10_000
BOUND_BYTES = 20 * 1024 * 1024  # documented: database + WAL stay under 20 MB
REPLIES = "dlaas-replies-size"


def work(path: Path) -> None:
    """A worker's queue traffic: receive 8, reply to each, delete them."""
    queue = SqliteQueue(path, "dlaas-input")
    replies = queue.sibling(REPLIES)
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 2:
        batch = queue.receive(8, wait_time_s=0.5)
        if not batch:
            continue
        idle_since = time.monotonic()
        bodies = []
        for message in batch:
            task = messages.Task.from_json(message.body)
            record = records.result_record(
                job_id=task.job_id,
                image_id=task.image_id,
                status="done",
                model="m",
                worker_id="w",
                timings_ms={"fetch": 1.0, "decode": 2.0, "infer_batch": 3.0},
                enqueued_at=task.enqueued_at,
            )
            bodies.append(messages.reply_to_json(messages.Finished(record, stored=True)))
        replies.send_batch(bodies)
        queue.delete_batch([m.receipt for m in batch])
    queue.close()


def test_the_queue_file_stays_under_the_documented_bound(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    wal = Path(f"{path}-wal")
    queue = SqliteQueue(path, "dlaas-input")
    replies = queue.sibling(REPLIES)
    peak = {"db": 0, "wal": 0}
    stop = threading.Event()

    def monitor() -> None:
        while not stop.is_set():
            for name, file in (("db", path), ("wal", wal)):
                with contextlib.suppress(FileNotFoundError):
                    peak[name] = max(peak[name], file.stat().st_size)
            time.sleep(0.01)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    for _ in range(IMAGES // 100):
        job_id = layout.new_job_id()
        queue.send_batch(
            [
                messages.Task(
                    job_id=job_id,
                    image_id=layout.new_id(),
                    key=layout.input_key(job_id, layout.new_id()),
                    reply_to=REPLIES,
                    progress=True,
                ).to_json()
                for _ in range(100)
            ]
        )
    workers = [mp.get_context("spawn").Process(target=work, args=(path,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    received = 0
    deadline = time.monotonic() + 300
    while received < IMAGES and time.monotonic() < deadline:
        batch = replies.receive(10, wait_time_s=0.5)
        replies.delete_batch([m.receipt for m in batch])
        received += len(batch)
    for worker in workers:
        worker.join(timeout=60)
    stop.set()
    watcher.join()
    queue.close()
    total_peak = peak["db"] + peak["wal"]
    print(
        f"\n{IMAGES} images: peak database {peak['db'] / 1e6:.1f} MB, peak WAL "
        f"{peak['wal'] / 1e6:.1f} MB; at the end {path.stat().st_size / 1e6:.1f} MB"
        f" + {wal.stat().st_size / 1e6 if wal.exists() else 0:.1f} MB"
    )
    assert received == IMAGES
    assert all(w.exitcode == 0 for w in workers)
    assert total_peak < BOUND_BYTES, peak
