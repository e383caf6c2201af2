"""A pool per model under ``dlaas serve``: an idle service of three models runs no worker,
a job for one model starts workers for that model only, and the fleet returns to 0.

Three small models in a repository (``add_model``, as ``dlaas model add``) keep it fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from dlaas.model import build_tiny_model
from dlaas.model.repository import ModelConfig, add_model
from dlaas.model.spec import Preprocessing
from tests.support import ServeProcess

pytestmark = pytest.mark.slow

MODELS = ("tiny-a", "tiny-b", "tiny-c")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("repo")
    for n, name in enumerate(MODELS):
        spec = build_tiny_model(tmp_path_factory.mktemp(name), num_classes=3 + n)
        labels = spec.onnx_path.parent / "labels.txt"
        add_model(root, name, spec.onnx_path, labels, ModelConfig(Preprocessing()))
    # A worker idles 3 s before it exits, so the 0.2 s polls below see it even when a
    # loaded machine stalls one of them (a tiny model's 8 images take milliseconds).
    serve = ServeProcess(
        tmp_path_factory.mktemp("serve"),
        ["--model-dir", str(root), "--model", "tiny-a", "--max-workers", "2",
         "--idle-timeout-s", "3", "--downscale-delay-s", "1", "--scale-interval-s", "0.25"],
    )  # fmt: skip
    try:
        serve.wait_ready()
        yield serve
    finally:
        serve.stop()


def fleet(server: ServeProcess) -> dict[str, int]:
    """Workers running or starting, by model (a model with no pool yet has none)."""
    stats = httpx.get(server.url + "/v1/stats", timeout=10).json()
    counts = {name: 0 for name in MODELS}
    for name, pool in stats["models"].items():
        counts[name] = pool["workers"]["running"] + pool["workers"]["starting"]
    return counts


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s")


def test_each_model_scales_on_its_own_backlog_from_and_to_zero(
    server: ServeProcess, photo: Callable[[str], bytes]
) -> None:
    assert fleet(server) == dict.fromkeys(MODELS, 0)  # idle: no worker for any model
    seen: dict[str, int] = dict.fromkeys(MODELS, 0)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        files = [("files", (f"{n}.jpg", photo("chelsea"))) for n in range(8)]
        job = client.post("/v1/jobs", files=files, data={"model": "tiny-b"}).json()

        def finished() -> bool:
            for name, count in fleet(server).items():
                seen[name] = max(seen[name], count)
            status = client.get(f"/v1/jobs/{job['job_id']}").json()
            return bool(status["status"] == "complete")

        wait_for(finished)
        results = client.get(f"/v1/jobs/{job['job_id']}").json()["results"]
    assert {r["model"] for r in results} == {"tiny-b"}
    assert all(len(r["predictions"]) == 4 for r in results)  # tiny-b has 4 classes
    assert seen["tiny-b"] >= 1 and seen["tiny-a"] == 0 and seen["tiny-c"] == 0, seen
    wait_for(lambda: fleet(server) == dict.fromkeys(MODELS, 0))
