"""A model repository served by ``dlaas serve --model-dir R``, driven by Triton's client.

Real processes: the repository is made by the CLI (``dlaas model build``, ``dlaas model
add`` with a 3-class head), served, indexed and loaded with ``tritonclient``, and a new
version swapped in under 16 classifying threads without a failed request.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlaas.client import run_classify
from dlaas.model import ModelSpec, build_tiny_model
from tests.conftest import need
from tests.support import ServeProcess

try:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException
except ImportError:  # pragma: no cover - the test extra installs it
    triton = None

pytestmark = pytest.mark.slow

CAT = "tabby, tiger cat, Egyptian cat"  # any of ImageNet's cat classes 281..285
THREADS = 16


def dlaas(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dlaas", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return build_tiny_model(tmp_path_factory.mktemp("head"), num_classes=3)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, head: ModelSpec) -> Path:
    root = tmp_path_factory.mktemp("repo")
    dlaas("model", "build", "efficientnet-lite1", "--model-dir", str(root))
    labels = str(head.onnx_path.parent / "labels.txt")
    out = dlaas("model", "add", "my-classifier", "--onnx", str(head.onnx_path),
                "--labels", labels, "--model-dir", str(root))  # fmt: skip
    assert "version 1 added" in out
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(
        tmp_path_factory.mktemp("serve-repo"), ["--model-dir", str(repo), "--workers", "2"]
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()


@pytest.fixture
def client(server: ServeProcess) -> Iterator[Any]:
    need(triton is not None, "tritonclient[http] is not installed; pip install -e '.[test]'")
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


def wait_until(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.1)


def classify(url: str, photo: bytes, **params: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/classify", params=params, files={"file": ("cat.jpg", photo)}, timeout=60
    )


def test_every_model_is_indexed_ready_and_labels_a_cat(
    server: ServeProcess, client: Any, photo: Any
) -> None:
    index = client.get_model_repository_index()
    names = ["efficientnet-lite0", "efficientnet-lite1", "my-classifier"]
    assert [(r["name"], r["version"], r["state"]) for r in index] == [
        (n, "1", "READY") for n in names
    ]
    listed = httpx.get(server.url + "/v1/models").json()
    assert listed["default"] == "efficientnet-lite0"
    assert [m["name"] for m in listed["models"]] == names
    assert listed["models"][1]["preprocessing"]["input_size"] == 240
    cat = photo("chelsea")
    for name in names[:2]:
        answer = classify(server.url, cat, model=name)
        assert answer.status_code == 200, answer.text
        record = answer.json()
        assert record["model"] == name and record["model_version"] == 1
        assert record["predictions"][0]["label"] in CAT
    own = classify(server.url, cat, model="my-classifier").json()
    assert len(own["predictions"]) == 3 and own["predictions"][0]["label"].startswith("class ")
    missing = classify(server.url, cat, model="resnet50")
    assert missing.status_code == 404 and missing.json()["error"] == "model_not_found"
    assert classify(server.url, cat, model="my-classifier", version="9").status_code == 404
    compat = httpx.post(server.url + "/", files={"myfile": ("c.jpg", cat)},
                        data={"model": "efficientnet-lite1"}, timeout=60)  # fmt: skip
    assert compat.status_code == 200 and compat.text in CAT


def test_config_is_triton_shaped_and_the_cli_names_a_model(
    server: ServeProcess, client: Any, tmp_path: Path, photo: Any
) -> None:
    config = client.get_model_config("my-classifier")
    assert config["name"] == "my-classifier" and config["max_batch_size"] == 0
    assert config["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert config["output"][0]["dims"] == [-1, 3]
    (tmp_path / "cat.jpg").write_bytes(photo("chelsea"))
    out = tmp_path / "out.json"
    code = run_classify(
        [str(tmp_path / "cat.jpg")], url=server.url, output=str(out), timeout_s=60,
        model="my-classifier",
    )  # fmt: skip
    assert code == 0
    assert '"model": "my-classifier"' in out.read_text()


def test_a_new_version_loads_under_load_without_a_failed_request(
    server: ServeProcess, client: Any, repo: Path, photo: Any
) -> None:
    cat = photo("chelsea")
    codes: list[int] = []
    versions: set[int] = set()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                r = http.post("/v1/classify?model=my-classifier", files={"file": ("c.jpg", cat)})
                codes.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(THREADS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: 1 in versions)  # the pool has started; version 1 answers
        version_2 = repo / "my-classifier" / "2"
        version_2.mkdir()
        (version_2 / "model.onnx").write_bytes((repo / "my-classifier/1/model.onnx").read_bytes())
        client.load_model("my-classifier")
        wait_until(lambda: 2 in versions)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert codes and set(codes) == {200}, f"{len(codes)} requests: {sorted(set(codes))}"
    assert versions == {1, 2}
    assert client.get_model_metadata("my-classifier")["versions"] == ["2"]


def test_a_broken_model_is_unavailable_with_its_reason_and_others_serve(
    server: ServeProcess, client: Any, repo: Path, photo: Any
) -> None:
    broken = repo / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    (broken / "labels.txt").write_text("a\nb\n")
    (broken / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(InferenceServerException, match="not a readable ONNX model"):
        client.load_model("broken")
    (row,) = [r for r in client.get_model_repository_index() if r["name"] == "broken"]
    assert row["state"] == "UNAVAILABLE" and "not a readable ONNX model" in row["reason"]
    assert classify(server.url, photo("chelsea"), model="broken").status_code == 503
    assert classify(server.url, photo("chelsea"), model="efficientnet-lite1").status_code == 200

    client.unload_model("efficientnet-lite1")
    assert not client.is_model_ready("efficientnet-lite1")
    assert classify(server.url, photo("chelsea"), model="efficientnet-lite1").status_code == 503
    client.load_model("efficientnet-lite1")
    assert client.is_model_ready("efficientnet-lite1")
