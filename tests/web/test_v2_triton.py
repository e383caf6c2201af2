"""The Open Inference Protocol spoken to Triton's own client, against ``dlaas serve``.

Real processes, the real model: what a Triton or KServe user would point at dlaas.
Top-1 must equal what ``/v1/classify`` says for the same photo.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import need
from tests.support import ServeProcess

try:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException
except ImportError:  # pragma: no cover - the test extra installs it
    triton = None

pytestmark = pytest.mark.slow

MODEL = "efficientnet-lite0"
SOURCES = ("chelsea", "coffee", "rocket", "astronaut", "retina", "hubble_deep_field")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path
) -> Iterator[ServeProcess]:
    proc = ServeProcess(
        tmp_path_factory.mktemp("serve-v2"),
        ["--model-dir", str(model_cache_dir), "--workers", "2"],
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
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=64)
    yield c
    c.close()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """32 distinct JPEGs: crops of real camera photos at several sizes."""
    from skimage import data

    out = []
    for n in range(32):
        img = Image.fromarray(getattr(data, SOURCES[n % len(SOURCES)])()[..., :3])
        w, h = img.size
        cut = 0.05 * (n // len(SOURCES))
        crop = img.crop((int(w * cut), int(h * cut), int(w * (1 - cut / 2)), h))
        buf = io.BytesIO()
        crop.convert("RGB").resize((320 + 16 * n, 240 + 12 * n)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def v1_top1(server: ServeProcess, photos: list[bytes]) -> list[int]:
    """``/v1/classify``'s top-1 class for each photo: the answer to match."""

    def one(image: bytes) -> int:
        r = httpx.post(server.url + "/v1/classify", files={"file": ("p.jpg", image)}, timeout=120)
        assert r.status_code == 200, r.text
        return int(r.json()["predictions"][0]["class_id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, photos))


def images_input(images: list[bytes], binary: bool) -> Any:
    """The BYTES input: raw bytes with the binary extension, base64 text in JSON."""
    items = images if binary else [base64.b64encode(i) for i in images]
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
    return tensor


def text(item: bytes | str) -> str:
    """A BYTES element: bytes from the binary form, str from JSON (as with Triton)."""
    return item.decode() if isinstance(item, bytes) else item


def top1_of(result: Any, n: int) -> list[int]:
    strings = result.as_numpy("probabilities")
    assert strings.shape == (n, 1)
    return [int(text(s).split(":")[1]) for s in strings[:, 0]]


def test_server_and_model_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("resnet50")
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}
    ]
    server = client.get_server_metadata()
    assert server["name"] == "dlaas" and "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("n", [1, 32])
def test_infer_top1_equals_v1_classify(
    client: Any, photos: list[bytes], v1_top1: list[int], n: int, binary: bool
) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=1)
    result = client.infer(MODEL, [images_input(photos[:n], binary)], outputs=[output])
    assert top1_of(result, n) == v1_top1[:n]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_probabilities_output_is_fp32_n_by_1000(
    client: Any, photos: list[bytes], v1_top1: list[int], binary: bool
) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [images_input(photos[:4], binary)], outputs=[output])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert probabilities.argmax(axis=1).tolist() == v1_top1[:4]


def test_classification_past_the_top5_is_ranked_from_every_score(
    client: Any, photos: list[bytes]
) -> None:
    top10 = triton.InferRequestedOutput("probabilities", class_count=10)
    every = triton.InferRequestedOutput("probabilities")
    inputs = [images_input(photos[:2], True)]
    ranked = client.infer(MODEL, inputs, outputs=[top10]).as_numpy("probabilities")
    scores = client.infer(MODEL, inputs, outputs=[every]).as_numpy("probabilities")
    assert ranked.shape == (2, 10)
    for row, strings in zip(scores, ranked, strict=True):
        parts = [text(s).split(":", 2) for s in strings]
        assert [int(p[1]) for p in parts] == np.argsort(-row, kind="stable")[:10].tolist()
        assert all(float(p[0]) == pytest.approx(row[int(p[1])], abs=1e-6) for p in parts)
        assert all(p[2] for p in parts)  # labels, e.g. "tabby, tabby cat"


def test_64_async_requests_in_flight_all_complete(client: Any, photos: list[bytes]) -> None:
    output = triton.InferRequestedOutput("probabilities", class_count=5)
    pending = [
        client.async_infer(MODEL, [images_input([photos[n % 32]], True)], outputs=[output])
        for n in range(64)
    ]
    results = [p.get_result() for p in pending]
    assert all(r.as_numpy("probabilities").shape == (1, 5) for r in results)


def test_refusals_come_in_the_protocols_error_shape(client: Any, photos: list[bytes]) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("resnet50")
    assert unknown.value.status() == "404" and "efficientnet-lite0" in unknown.value.message()
    with pytest.raises(InferenceServerException) as not_image:
        client.infer(MODEL, [images_input([b"plain text, not a photo"], True)])
    assert not_image.value.status() == "415" and "not an image" in not_image.value.message()
    wrong = triton.InferInput("pixels", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([photos[0]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as bad_name:
        client.infer(MODEL, [wrong])
    assert bad_name.value.status() == "400" and "'image'" in bad_name.value.message()


def test_hand_written_kserve_v2_json_gets_the_same_labels(
    server: ServeProcess, photos: list[bytes], v1_top1: list[int]
) -> None:
    """No client library: the protocol's JSON form, images as base64 BYTES."""
    request = {
        "id": "hand-1",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [3, 1],
                "data": [[base64.b64encode(p).decode("ascii")] for p in photos[:3]],
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=request, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == MODEL and body["id"] == "hand-1"
    (output,) = body["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [3, 2]
    top1 = [int(s.split(":")[1]) for s in output["data"][::2]]
    assert top1 == v1_top1[:3]
    labels = httpx.post(
        server.url + "/v1/classify", files={"file": ("p.jpg", photos[0])}, timeout=120
    ).json()
    assert output["data"][0].split(":", 2)[2] == labels["predictions"][0]["label"]
