"""A bucket job next to an upload job, side by side in one run.

The same photos, classified by the same ``dlaas serve --workers <cpus>`` (the embedded
default: SQLite queue, ``file://`` store, the built-in model), two ways, alternating
round by round:

- upload: one ``POST /v1/jobs`` of every photo (multipart, ``--job-size`` photos a job),
  timed from the first byte sent to the last job complete;
- bucket: one ``POST /v1/jobs`` with a JSON body naming the folder the photos sit in
  (``file://``, what ``--source-allow`` allows), timed to the job complete and to its
  JSON Lines file written.

Each figure is images per second; the ratio to read is the median of the per-round
bucket/upload ratios.

    .venv/bin/python bench/source_jobs.py [--images 1000] [--repeats 3] [--job-size 250]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from common import ROOT, ServeProcess, cpu_count, ensure_model_dir, multipart, photo_set


def wait_job(client: httpx.Client, job_id: str, done: Any, timeout_s: float = 1800) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", params={"results": "false"}).json()
        if done(job):
            return
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")


def upload_img_s(client: httpx.Client, photos: list[bytes], job_size: int) -> float:
    started = time.perf_counter()
    job_ids = []
    for start in range(0, len(photos), job_size):
        chunk = photos[start : start + job_size]
        body, content_type = multipart(
            "files", [(f"{start + n}.jpg", data) for n, data in enumerate(chunk)]
        )
        answer = client.post("/v1/jobs", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 202, answer.text
        job_ids.append(answer.json()["job_id"])
    for job_id in job_ids:
        wait_job(client, job_id, lambda j: j["status"] == "complete")
    return len(photos) / (time.perf_counter() - started)


def bucket_img_s(client: httpx.Client, folder: Path, out: Path, count: int) -> tuple[float, float]:
    """images/s to the job complete, and to its output written."""
    started = time.perf_counter()
    body = {"source": f"file://{folder}/", "output": f"file://{out}/"}
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    wait_job(
        client, job_id, lambda j: j["counts"].get("settled", 0) >= count or "done" in j["counts"]
    )
    complete_s = time.perf_counter() - started
    wait_job(client, job_id, lambda j: j["listing"]["phase"] == "written")
    return count / complete_s, count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job-size", type=int, default=250)
    args = parser.parse_args()
    photos = photo_set(args.images, sizes=(320, 1600))
    workers = cpu_count()
    with tempfile.TemporaryDirectory(dir=ROOT / ".dlaas") as tmp:
        root = Path(tmp)
        folder, out = root / "data" / "photos", root / "data" / "labels"
        folder.mkdir(parents=True)
        for n, data in enumerate(photos):
            (folder / f"{n:06d}.jpg").write_bytes(data)
        serve = ServeProcess(
            root / "serve",
            [
                "--model-dir", str(ensure_model_dir()), "--workers", str(workers),
                "--source-allow", f"file://{root / 'data'}/", "--log-level", "warning",
            ],
        )  # fmt: skip
        rows: list[tuple[float, float, float]] = []
        try:
            serve.wait_ready()
            with httpx.Client(base_url=serve.url, timeout=300) as client:
                upload_img_s(client, photos[:64], 64)  # warm-up
                for round_ in range(args.repeats):
                    if round_ % 2 == 0:
                        up = upload_img_s(client, photos, args.job_size)
                        done, written = bucket_img_s(client, folder, out, len(photos))
                    else:
                        done, written = bucket_img_s(client, folder, out, len(photos))
                        up = upload_img_s(client, photos, args.job_size)
                    rows.append((up, done, written))
                    print(
                        f"round {round_ + 1}: upload {up:.1f} img/s, bucket {done:.1f} img/s "
                        f"(with its output written {written:.1f}); bucket/upload {done / up:.2f}"
                    )
        finally:
            serve.stop()
    ups, dones, writtens = zip(*rows, strict=True)
    print(
        f"\n{args.images} photos, {workers} workers, medians of {args.repeats} rounds: upload "
        f"{statistics.median(ups):.1f} img/s, bucket job {statistics.median(dones):.1f} img/s "
        f"({statistics.median(writtens):.1f} with its JSON Lines file); bucket/upload "
        f"{statistics.median(d / u for u, d, _ in rows):.2f}"
    )


if __name__ == "__main__":
    main()
