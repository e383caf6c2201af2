"""A job over a SeaweedFS prefix on a web tier and two workers sharing Redis, with the
web tier SIGKILLed mid-listing and restarted (small counts; ``bench/source_jobs.py``
runs the same with 2,000 and 20,000 objects)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from dlaas.jobs import layout
from dlaas.model import ModelSpec
from tests.aws.servers import Server, fixture_seaweedfs_server  # noqa: F401 - fixture
from tests.aws.source_stack import SourceStack
from tests.conftest import jpeg_bytes
from tests.queue.redis_server import RedisServer, fixture_redis_server  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

OBJECTS, PAGE_KEYS = 300, 50


@pytest.fixture
def stack(
    tmp_path: Path, redis_server: RedisServer, seaweedfs_server: Server, tiny_spec: ModelSpec
) -> Iterator[SourceStack]:
    # Small pages and a small backlog: after each page the listing waits (a second) for
    # the workers, so the web process is killed with most of the prefix still to list.
    extra = ["--source-page-keys", str(PAGE_KEYS), "--max-backlog", "20"]
    made = SourceStack(tmp_path, redis_server, seaweedfs_server, tiny_spec, extra=extra)
    try:
        yield made
    finally:
        made.stop()


def test_a_prefix_job_survives_a_killed_web_tier_and_writes_one_file(stack: SourceStack) -> None:
    images = [jpeg_bytes(Image.new("RGB", (40, 30), (n * 40 % 256, 90, 200))) for n in range(6)]
    stack.fill(images, OBJECTS)
    stack.s3.put_object(Bucket=stack.bucket, Key="photos/zz-notes.txt", Body=b"not an image")
    elsewhere = stack.submit(f"s3://{stack.bucket}/private/")
    assert elsewhere.status_code == 403, elsewhere.text
    assert "not under a root" in elsewhere.json()["detail"]

    accepted = stack.submit()
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    listed = stack.wait(job_id, lambda j: j["listing"]["listed"] >= PAGE_KEYS, 30)
    assert listed["listing"]["phase"] == "listing"  # killed mid-listing, not after
    stack.kill_and_restart_web()

    job = stack.wait(job_id, lambda j: j["listing"]["phase"] == "written", 90)
    total = OBJECTS + 1
    assert job["status"] == "complete"
    assert job["counts"] == {"total": total, "queued": 0, "done": OBJECTS, "failed": 1}
    lines = stack.output_lines(job_id)
    assert len(lines) == total
    assert len({line["key"] for line in lines}) == total
    for line in lines:
        assert line["image_id"] == layout.source_image_id(line["key"])
        if line["key"].endswith(".jpg"):
            assert line["status"] == "done" and len(line["predictions"]) == 5
    assert lines[-1]["status"] == "failed" and lines[-1]["error"]

    classified = stack.classified(job_id)
    assert len(classified) == OBJECTS
    assert max(classified.values()) == 1, "an image was classified twice"
    assert "source_job_resumed" in stack.web.log_path.read_text()
