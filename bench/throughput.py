"""End-to-end throughput next to the bare decode+ORT loop, in one run.

A 64-thread client on the same box posts real photos one per request to the running
service (HTTP, storage, queue, workers, result delivery, all included) and we compare
images/s with the bare loop (one process per core, one thread each, no I/O).
Goal: >= 0.9x the bare loop. Each service run sits next to a bare-loop run; the median of
those pairwise ratios is the figure to read. It also prints where the CPU went: the web
tier, the workers and the client, in milliseconds per image.

    .venv/bin/python bench/throughput.py [--endpoint / | /v1/classify] [--images 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import (
    ServeProcess,
    bare_loop_img_s,
    cpu_count,
    ensure_model_dir,
    multipart,
    photo_set,
    post_all,
)


def service_rate(port: int, images: list[bytes], endpoint: str, threads: int) -> float:
    field = "myfile" if endpoint == "/" else "file"
    bodies = [multipart(field, [("photo.jpg", b)]) for b in images]
    return post_all(port, endpoint, bodies, threads, expect=200)  # one image per request


def cpu_s_by_role(serve_pid: int) -> dict[str, float]:
    """CPU seconds so far of the web tier, of its workers together, and of this client."""
    from tests.support import descendants_of

    def cpu_s(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0  # exited (a worker that idled out); its time is lost to the count
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return {
        "web": cpu_s(serve_pid),
        "workers": sum(cpu_s(pid) for pid in descendants_of(serve_pid)),
        "client": time.process_time(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--endpoint", default="/", choices=["/", "/v1/classify"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=cpu_count())
    parser.add_argument("--serve-args", default="", help="extra flags for dlaas serve")
    args = parser.parse_args()

    model_dir = ensure_model_dir()
    images = photo_set(args.images, size=(640, 480))
    bare, service = [], []
    cpu_ms: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServeProcess(
            Path(tmp),
            [
                *("--workers", str(args.workers), "--model-dir", str(model_dir)),
                *("--log-level", "warning", *args.serve_args.split()),
            ],
        )
        try:
            server.wait_ready()
            service_rate(server.port, images[:64], args.endpoint, args.threads)  # warm-up
            for _ in range(args.repeats):
                before = cpu_s_by_role(server.proc.pid)
                service.append(service_rate(server.port, images, args.endpoint, args.threads))
                for role, cpu_s in cpu_s_by_role(server.proc.pid).items():
                    cpu_ms[role] += (cpu_s - before.get(role, 0.0)) * 1000
                bare.append(bare_loop_img_s(model_dir, images, processes=cpu_count()))
        finally:
            server.stop()
    b, s = statistics.median(bare), statistics.median(service)
    print(
        f"{cpu_count()} CPUs, {len(images)} photos 640x480, {args.threads} client threads, "
        f"POST {args.endpoint}"
    )
    print(
        f"  bare decode+ORT loop ({cpu_count()} proc x 1 thread): {b:6.0f} img/s"
        f"  runs {[round(x) for x in bare]}"
    )
    print(
        f"  dlaas end to end ({args.workers} workers):        {s:6.0f} img/s"
        f"  runs {[round(x) for x in service]}"
    )
    # Each service run sits next to its own bare-loop run, so the pairwise ratios cancel
    # most of the shared machine's drift; their median is the figure to read.
    pairs = [x / y for x, y in zip(service, bare, strict=True)]
    print(f"  ratio of medians: {s / b:.2f} x bare loop")
    per_image = len(images) * args.repeats
    print(
        f"  CPU per image: bare loop {1000 * cpu_count() / b:.1f} ms (all cores busy); "
        f"dlaas workers {cpu_ms['workers'] / per_image:.1f} ms, web tier "
        f"{cpu_ms['web'] / per_image:.1f} ms, client {cpu_ms['client'] / per_image:.1f} ms"
    )
    print(
        f"  ratio, median of side-by-side pairs: {statistics.median(pairs):.2f} x"
        f"  pairs {[round(x, 2) for x in pairs]}  (goal >= 0.90)"
    )


if __name__ == "__main__":
    main()
