"""Jobs over a bucket prefix at full size, on SeaweedFS + Redis with one web process and
two workers (the small-count version is tests/aws/test_source_jobs.py):

1. a job over ``--small`` objects (default 2,000, the real model) completes; its output
   is one JSON Lines object with a line per key, each with its top-5; a source outside
   ``--source-allow`` is refused;
2. a job over ``--big`` objects (default 20,000) is accepted at once and counts them
   all: the listing's rate, and the web process's RSS before and at its peak;
3. the same prefix again (the first job purged), the web process SIGKILLed mid-listing
   and restarted: the job
   ends with every result, and the workers' logs show no image classified twice.

    .venv/bin/python bench/source_acceptance.py [--small 2000] [--big 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from common import ROOT, ensure_model_dir, photo_set  # puts src/ and tests/ on the path
from dlaas.model import ModelSpec, build_tiny_model

if TYPE_CHECKING:
    from tests.queue.redis_server import RedisServer


def real_model() -> ModelSpec:
    from dlaas.model import ensure_model

    return ensure_model(ensure_model_dir())


def check_small(root: Path, redis: RedisServer, seaweed: Any, count: int) -> None:
    """Acceptance 1, with the real model."""
    from tests.aws.source_stack import SourceStack

    stack = SourceStack(root / "small", redis, seaweed, real_model())
    try:
        stack.fill(photo_set(64, size=(320, 240)), count)
        refused = stack.submit(f"s3://{stack.bucket}/elsewhere/")
        print(f"1. outside --source-allow: HTTP {refused.status_code} {refused.json()['error']}")
        started = time.perf_counter()
        job_id = stack.submit().json()["job_id"]
        job = stack.wait(job_id, lambda j: j["listing"]["phase"] == "written", 1800)
        elapsed = time.perf_counter() - started
        lines = stack.output_lines(job_id)
        top5 = sum(1 for line in lines if len(line["predictions"]) == 5 and line["key"])
        print(
            f"1. {count} objects: {job['status']} {job['counts']} in {elapsed:.1f} s "
            f"({count / elapsed:.1f} img/s); output {job['listing']['output_url']}: "
            f"{len(lines)} lines, {len({line['key'] for line in lines})} keys, {top5} with top-5"
        )
    finally:
        stack.stop()


def check_listing(stack: Any, count: int) -> None:
    """Acceptance 2: a job over ``count`` objects is listed, with the web tier's RSS; the
    job is then purged, so the workers' time goes to check 3."""
    from tests.support import peak_rss_mb, rss_mb

    pid = stack.web.proc.pid
    warm = stack.submit(f"s3://{stack.bucket}/nothing/")  # opens the S3 client once
    before, samples = rss_mb(pid), []
    started = time.perf_counter()
    accepted = stack.submit()
    answer_ms = (time.perf_counter() - started) * 1000
    job_id = accepted.json()["job_id"]

    def listed_all(job: dict[str, Any]) -> bool:
        samples.append(rss_mb(pid))
        return bool(job["listing"]["phase"] != "listing")

    job = stack.wait(job_id, listed_all, 600)
    listed_s = time.perf_counter() - started
    listed = job["listing"]["listed"]
    print(
        f"2. {count} objects: 202 in {answer_ms:.0f} ms (warm-up {warm.status_code}); "
        f"{listed} listed in {listed_s:.1f} s ({listed / listed_s:.0f} keys/s); web RSS "
        f"{before:.0f} MB before, {max(samples):.0f} MB at most while listing "
        f"(+{max(samples) - before:.0f} MB; high-water mark {peak_rss_mb(pid):.0f} MB)"
    )
    purged = httpx.delete(
        f"{stack.web.url}/v1/jobs/{job_id}?purge=true", headers=stack.cluster.headers, timeout=600
    )
    assert purged.status_code == 200, purged.text


def check_big(
    root: Path,
    redis: RedisServer,
    seaweed: Any,
    count: int,
    *,
    listing: bool = True,
    kill: bool = True,
) -> None:
    """Acceptance 2 (unless ``listing`` is False) and 3 (unless ``kill`` is), with the
    tiny model."""
    from tests.aws.source_stack import SourceStack

    tiny = build_tiny_model(root / "tiny-model")
    stack = SourceStack(root / "big", redis, seaweed, tiny)
    try:
        fill_s = stack.fill(photo_set(64, size=(64, 48)), count)
        print(f"2. filled {count} objects in {fill_s:.1f} s")
        if listing:
            check_listing(stack, count)
        if not kill:
            return
        job_id = stack.submit().json()["job_id"]
        mid = stack.wait(job_id, lambda j: j["listing"]["listed"] >= count // 4, 600)
        stack.kill_and_restart_web()
        print(f"3. SIGKILLed the web process at {mid['listing']['listed']} listed; restarted")
        job = stack.wait(job_id, lambda j: j["listing"]["phase"] == "written", 3600)
        classified = stack.classified(job_id)
        lines = stack.output_lines(job_id)
        twice = sum(1 for n in classified.values() if n > 1)
        print(
            f"3. {job['status']} {job['counts']}; output {len(lines)} lines; workers logged "
            f"{sum(classified.values())} image_done lines for {len(classified)} images, "
            f"{twice} classified twice"
        )
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--big", type=int, default=20000)
    parser.add_argument("--no-listing", action="store_true", help="skip check 2")
    parser.add_argument("--no-kill", action="store_true", help="skip check 3")
    args = parser.parse_args()
    from tests.aws.servers import _seaweedfs_server
    from tests.queue.redis_server import RedisServer

    seaweed = _seaweedfs_server()
    seaweed.start()
    redis = RedisServer()
    redis.start()
    try:
        with tempfile.TemporaryDirectory(dir=ROOT / ".dlaas") as tmp:
            if args.small:
                check_small(Path(tmp), redis, seaweed, args.small)
            if args.big:
                check_big(
                    Path(tmp),
                    redis,
                    seaweed,
                    args.big,
                    listing=not args.no_listing,
                    kill=not args.no_kill,
                )
    finally:
        redis.cleanup()
        seaweed.stop()


if __name__ == "__main__":
    main()
