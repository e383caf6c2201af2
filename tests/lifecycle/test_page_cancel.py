"""The page's Cancel button on a running job, in a real browser (see tests/web/test_page.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, expect

from dlaas.model import ModelSpec
from tests.support import ServeProcess

pytestmark = pytest.mark.slow
IMAGES = 150


@pytest.fixture
def slow_server(tmp_path: Path, slow_spec: ModelSpec) -> Iterator[ServeProcess]:
    """One worker, one image per batch, a slow model: a job of 150 images runs for seconds."""
    labels = slow_spec.onnx_path.parent / "labels.txt"
    serve = ServeProcess(
        tmp_path / "serve",
        [
            "--model", str(slow_spec.onnx_path), "--labels", str(labels),
            "--workers", "1", "--batch-size", "1", "--max-batch-delay-ms", "0",
        ],
    )  # fmt: skip
    try:
        serve.wait_ready()
        yield serve
    finally:
        serve.stop()


def test_cancel_a_running_job_from_the_page(
    browser: Browser, slow_server: ServeProcess, tmp_path: Path
) -> None:
    paths = []
    for n in range(IMAGES):
        path = tmp_path / f"img{n:03d}.png"
        Image.new("RGB", (48, 32), (n, 255 - n, 80)).save(path)
        paths.append(path)
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(slow_server.url + "/")
    page.locator("#file-input").set_input_files([str(p) for p in paths])
    job = page.locator(".job")
    cancel = job.locator(".job-cancel")
    # given a running job with some results in
    expect(cancel).to_be_visible(timeout=30_000)
    expect(job.locator('.card[data-state="done"]').first).to_be_visible(timeout=30_000)
    # when the person presses Cancel
    cancel.click()
    # then the job ends as cancelled, the rest of its images marked so, and the button goes
    expect(job).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(cancel).to_be_hidden()
    cancelled = job.locator('.card[data-state="cancelled"]').count()
    done = job.locator('.card[data-state="done"]').count()
    assert cancelled > 0 and done > 0 and cancelled + done == IMAGES
    expect(job.locator(".job-counts")).to_contain_text(f"{cancelled} cancelled")
    job_id = job.locator(".job-id").get_attribute("title")
    status = httpx.get(f"{slow_server.url}/v1/jobs/{job_id}", timeout=10).json()
    assert status["status"] == "cancelled"
    assert status["counts"]["cancelled"] == cancelled and status["counts"]["done"] == done
    assert errors == []
    page.close()
