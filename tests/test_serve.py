"""``dlaas serve`` end to end: real processes, the real model, the embedded backends."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import ServeProcess, children_of, peak_rss_mb

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path
) -> Iterator[ServeProcess]:
    data_dir = tmp_path_factory.mktemp("serve")
    proc = ServeProcess(data_dir, ["--model-dir", str(model_cache_dir), "--workers", "2"])
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()


def test_ready_only_once_workers_can_start(server: ServeProcess) -> None:
    """`/readyz` waits for the fork server to hold a warm model, so a first job is quick."""
    checks = httpx.get(server.url + "/readyz", timeout=10).json()["checks"]
    assert checks == {"storage": "ok", "queue": "ok", "replies": "ok", "workers": "ok"}


def test_cat_photo_gets_a_cat_label(server: ServeProcess, photo: Callable[[str], bytes]) -> None:
    response = httpx.post(
        server.url + "/", files={"myfile": ("cat.jpg", photo("chelsea"))}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text in CAT_LABELS
    assert "server" not in response.headers  # the software behind it is nobody's business
    assert "date" in response.headers  # an origin server with a clock sends one (RFC 9110)


def test_100_concurrent_workload_generator_requests(
    server: ServeProcess,
    photo: Callable[[str], bytes],
    record_property: Callable[[str, object], None],
) -> None:
    """The workload generator's pattern: 100 threads, one image each, field ``myfile``."""
    image = photo("chelsea")

    def one(_n: int) -> tuple[int, str]:
        r = httpx.post(server.url + "/", files={"myfile": ("cat.jpg", image)}, timeout=120)
        return r.status_code, r.text

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=100) as pool:
        outcomes = list(pool.map(one, range(100)))
    wall_s = time.perf_counter() - started
    record_property("wall_s_100_concurrent", round(wall_s, 2))
    print(f"\n100 concurrent requests: {wall_s:.2f} s wall")
    assert [status for status, _ in outcomes] == [200] * 100
    assert {text for _, text in outcomes} <= CAT_LABELS


def test_1000_image_job_has_exactly_1000_results_and_flat_memory(
    server: ServeProcess, photo: Callable[[str], bytes], request: pytest.FixtureRequest
) -> None:
    photos = [photo(n) for n in ("chelsea", "coffee", "rocket", "astronaut")]
    client = httpx.Client(base_url=server.url, timeout=120)
    request.addfinalizer(client.close)

    def run_job(n: int) -> dict[str, object]:
        files = [("files", (f"{i}.jpg", photos[i % len(photos)])) for i in range(n)]
        accepted = client.post("/v1/jobs", files=files)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "complete":
                return dict(job)
            time.sleep(1.0)
        raise AssertionError(f"job {job_id} did not complete: {job['counts']}")

    run_job(100)  # warm up: every process has seen real work
    web_before = peak_rss_mb(server.proc.pid)
    workers = children_of(server.proc.pid)
    workers_before = {pid: peak_rss_mb(pid) for pid in workers}

    job = run_job(1000)
    results = job["results"]
    assert isinstance(results, list)
    ids = [r["image_id"] for r in results]
    assert len(ids) == 1000
    assert len(set(ids)) == 1000
    assert {i["image_id"] for i in job["images"]} == set(ids)  # type: ignore[union-attr]
    assert all(r["status"] == "done" for r in results)

    web_after = peak_rss_mb(server.proc.pid)
    workers_after = {pid: peak_rss_mb(pid) for pid in workers if Path(f"/proc/{pid}").exists()}
    print(
        f"\npeak RSS MB: web {web_before:.0f} -> {web_after:.0f}; workers "
        + ", ".join(f"{workers_before[p]:.0f} -> {workers_after[p]:.0f}" for p in workers_after)
    )
    assert web_after - web_before < 150
    for pid, after in workers_after.items():
        assert after - workers_before[pid] < 100


def test_a_bad_upload_does_not_stop_the_service(
    server: ServeProcess, photo: Callable[[str], bytes]
) -> None:
    bad = httpx.post(server.url + "/", files={"myfile": ("cat.jpg", b"GIF89a broken")}, timeout=30)
    assert bad.status_code == 422
    good = httpx.post(server.url + "/", files={"myfile": ("cat.jpg", photo("chelsea"))}, timeout=60)
    assert good.status_code == 200


def test_classify_command_prints_labels_and_writes_files(
    server: ServeProcess, photo: Callable[[str], bytes], tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        (folder / f"{name}.jpg").write_bytes(photo(name))
    cmd = [sys.executable, "-m", "dlaas", "classify", str(folder), "--url", server.url]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert any(label in table.stdout for label in ("tabby", "tiger cat", "Egyptian cat"))
    assert any(label in table.stdout for label in ("espresso", "cup", "coffee mug"))
    assert any(label in table.stdout for label in ("missile", "projectile", "space shuttle"))

    out = tmp_path / "results.json"
    assert subprocess.run([*cmd, "--output", str(out)], timeout=120).returncode == 0
    rows = json.loads(out.read_text())
    assert sorted(r["filename"] for r in rows) == ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]

    csv_out = tmp_path / "results.csv"
    assert subprocess.run([*cmd, "--output", str(csv_out)], timeout=120).returncode == 0
    assert csv_out.read_text().splitlines()[0].startswith("filename,image_id,status,error,label_1")

    (folder / "notes.jpg").write_text("not a photo")
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "notes.jpg" in failed.stdout


def test_workers_do_not_outlive_a_killed_serve(tmp_path: Path, model_cache_dir: Path) -> None:
    """Even after SIGKILL (no chance to drain), `dlaas serve` leaves no worker behind."""
    import signal

    from tests.support import descendants_of

    proc = ServeProcess(tmp_path / "serve", ["--model-dir", str(model_cache_dir), "--workers", "2"])
    proc.wait_ready()
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline:
        stats = httpx.get(proc.url + "/v1/stats", timeout=10).json()
        if stats["workers"]["running"] == 2:
            workers = [p for p in descendants_of(proc.proc.pid) if "worker" in _cmdline(p)]
        time.sleep(0.2)
    descendants = descendants_of(proc.proc.pid)
    assert len(descendants) >= 2
    proc.proc.send_signal(signal.SIGKILL)
    proc.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in descendants):
        time.sleep(0.2)
    assert [p for p in descendants if _alive(p)] == [], "processes outlived dlaas serve"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""
