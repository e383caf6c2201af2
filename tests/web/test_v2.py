"""The Open Inference Protocol routes in process: memory backends, a worker thread, the tiny
model. The wire format is written out by hand here; tests/web/test_v2_triton.py speaks it
through Triton's own client against ``dlaas serve``."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dlaas.model import ModelSpec
from tests.service import Service

INFER = "/v2/models/model/infer"  # the tiny model's file is model.onnx


def tiny_settings(spec: ModelSpec) -> dict[str, Any]:
    return {"model": str(spec.onnx_path), "labels": str(spec.onnx_path.parent / "labels.txt")}


@pytest.fixture
def service(tiny_spec: ModelSpec) -> Iterator[Service]:
    """The shared fixture's service, serving the tiny model under its own name."""
    svc = Service(tiny_spec, **tiny_settings(tiny_spec))
    yield svc
    svc.close()


def json_request(images: list[bytes], outputs: list[dict[str, Any]] | None = None) -> Any:
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [base64.b64encode(i).decode() for i in images],
            }
        ]
    }
    if outputs is not None:
        request["outputs"] = outputs
    return request


def binary_request(
    images: list[bytes], outputs: list[dict[str, Any]] | None = None
) -> tuple[bytes, dict[str, str]]:
    """The binary data extension: JSON, then each element as a 4-byte length and its bytes."""
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images), 1],
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    if outputs is not None:
        request["outputs"] = outputs
    head = json.dumps(request).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def split_binary(body: bytes, header_length: str) -> tuple[dict[str, Any], bytes]:
    return json.loads(body[: int(header_length)]), body[int(header_length) :]


def test_metadata_names_the_served_model_and_its_tensors(client: TestClient) -> None:
    extensions = client.get("/v2").json()["extensions"]
    assert extensions == [
        "binary_tensor_data", "classification", "model_repository", "model_configuration",
    ]  # fmt: skip
    metadata = client.get("/v2/models/model").json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/model/versions/1").json() == metadata
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json()["ready"] is True
    assert client.get("/v2/models/model/ready").json()["ready"] is True


def test_json_and_binary_forms_give_the_same_probabilities(
    client: TestClient, small_jpeg: bytes, photo: Any
) -> None:
    images = [small_jpeg, photo("chelsea"), photo("coffee")]
    as_json = client.post(INFER, json=json_request(images))
    assert as_json.status_code == 200, as_json.text
    (output,) = as_json.json()["outputs"]
    assert output["datatype"] == "FP32" and output["shape"] == [3, 10]
    from_json = np.array(output["data"], dtype=np.float32).reshape(3, 10)

    body, headers = binary_request(images)
    as_binary = client.post(INFER, content=body, headers=headers)
    assert as_binary.status_code == 200, as_binary.text
    assert as_binary.headers["content-type"] == "application/octet-stream"
    head, raw = split_binary(
        as_binary.content, as_binary.headers["Inference-Header-Content-Length"]
    )
    (described,) = head["outputs"]
    assert (
        described["parameters"]
        == {"binary_data_size": 3 * 10 * 4}
        == {"binary_data_size": len(raw)}
    )
    from_binary = np.frombuffer(raw, dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(from_binary, from_json, rtol=1e-6)
    np.testing.assert_allclose(from_binary.sum(axis=1), 1.0, rtol=1e-5)


def test_classification_strings_match_v1_classify(client: TestClient, photo: Any) -> None:
    image = photo("rocket")
    v1 = client.post("/v1/classify", files={"file": ("r.jpg", image)}).json()["predictions"]
    outputs = [{"name": "probabilities", "parameters": {"classification": 3}}]
    body, headers = binary_request([image], outputs)
    response = client.post(INFER, content=body, headers=headers)
    head, raw = split_binary(response.content, response.headers["Inference-Header-Content-Length"])
    assert head["outputs"][0]["datatype"] == "BYTES" and head["outputs"][0]["shape"] == [1, 3]
    strings, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<I", raw, pos)
        strings.append(raw[pos + 4 : pos + 4 + n].decode())
        pos += 4 + n
    assert strings == [f"{p['score']:f}:{p['class_id']}:{p['label']}" for p in v1[:3]]
    # Past the worker's top 5, the ranking comes from every score.
    all_ten = json_request(
        [image], [{"name": "probabilities", "parameters": {"classification": 10}}]
    )
    ranked = client.post(INFER, json=all_ten).json()["outputs"][0]["data"]
    assert [int(s.split(":")[1]) for s in ranked[:3]] == [p["class_id"] for p in v1[:3]]
    assert sorted(int(s.split(":")[1]) for s in ranked) == list(range(10))


def one_input(outputs: list[dict[str, Any]] | None = None, **fields: Any) -> bytes:
    """A JSON request whose one input is a 1-byte image, with ``fields`` changed."""
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]} | fields
    return json.dumps({"inputs": [tensor], "outputs": outputs or []}).encode()


def with_binary(declared: int, raw: bytes) -> tuple[bytes, dict[str, str]]:
    head = one_input(data=None, parameters={"binary_data_size": declared})
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(
    ("request_body", "headers", "says"),
    [
        (b"not json", {}, "not JSON"),
        (b"[]", {}, "JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, {}, "not JSON"),  # a nesting bomb
        (json.dumps({"inputs": []}).encode(), {}, "exactly one input"),
        (one_input([{"name": "logits"}]), {}, "unknown output 'logits'"),
        (
            one_input([{"name": "probabilities", "parameters": {"classification": 11}}]),
            {},
            "1 to 10 classes",
        ),
        (one_input(name="img"), {}, "unknown input 'img'"),
        (one_input(datatype="FP32"), {}, "send BYTES"),
        (one_input(shape=[2]), {}, "holds 1"),
        (one_input(shape=[1, 3]), {}, "[N] or [N, 1]"),
        (one_input(data=["not base64!"]), {}, "not base64"),
        (one_input(data=["QUJD\nREVG"]), {}, "not base64"),  # line breaks: not strict base64
        (one_input(data=["QQ"]), {}, "not base64"),  # padding left off
        (one_input(data=["été"]), {}, "not base64"),
        (one_input(shape=[257]), {}, "the limit is 256"),
        (one_input(data=None), {}, "no 'data'"),
        (b'{"inputs": []}xx', {"Inference-Header-Content-Length": "99"}, "Inference-Header"),
        (*with_binary(50, b"\x01\x00\x00\x00a"), "binary_data_size 50"),
        (*with_binary(5, b"\x01\x00\x00\x00abc"), "2 bytes follow the JSON beyond"),
        (*with_binary(2, b"\x01\x00"), "inside an element's length"),
    ],
)
def test_malformed_requests_are_400_in_the_protocols_shape(
    client: TestClient, request_body: bytes, headers: dict[str, str], says: str
) -> None:
    response = client.post(INFER, content=request_body, headers=headers)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"] and says in response.json()["error"]


def test_a_short_element_in_binary_data_is_400(client: TestClient, small_jpeg: bytes) -> None:
    body, headers = binary_request([small_jpeg])
    length = int(headers["Inference-Header-Content-Length"])
    head, raw = json.loads(body[:length]), body[length:-10]  # the element says 10 more
    head["inputs"][0]["parameters"]["binary_data_size"] = len(raw)
    fixed = json.dumps(head).encode()
    response = client.post(
        INFER, content=fixed + raw, headers={"Inference-Header-Content-Length": str(len(fixed))}
    )
    assert response.status_code == 400 and "fewer follow" in response.json()["error"]


def test_refusals_keep_their_status_codes(tiny_spec: ModelSpec, small_jpeg: bytes) -> None:
    svc = Service(tiny_spec, max_upload_mb=0.001, **tiny_settings(tiny_spec))
    big = small_jpeg + b"\0" * 2000
    truncated = small_jpeg[: len(small_jpeg) // 2]
    try:
        with TestClient(svc.app) as client:
            cases = [
                (client.get("/v2/models/resnet"), 404, "unknown model 'resnet'"),
                (client.get("/v2/models/model/versions/7"), 404, "no version '7'"),
                (client.get("/v2/repository/index"), 405, "Method Not Allowed"),
                (client.post(INFER, json=json_request([b"hello"])), 415, "not an image"),
                (client.post(INFER, json=json_request([small_jpeg, truncated])), 422, "file 2"),
                (client.post(INFER, json=json_request([big])), 413, "limit"),
            ]
            for response, status, says in cases:
                assert response.status_code == status, response.text
                assert list(response.json()) == ["error"] and says in response.json()["error"]
            # dlaas's own routes keep their shape
            v1 = client.get("/v1/jobs/" + "0" * 32)
            assert v1.status_code == 404 and set(v1.json()) >= {"error", "detail"}
        assert svc.storage.list("inputs/") == []  # nothing of a refused request stays
    finally:
        svc.close()


def test_busy_queue_is_429_with_retry_after(tiny_spec: ModelSpec, small_jpeg: bytes) -> None:
    svc = Service(tiny_spec, with_worker=False, max_backlog=1, **tiny_settings(tiny_spec))
    try:
        svc.queue.send_batch(["{}", "{}"])
        with TestClient(svc.app) as client:
            response = client.post(INFER, json=json_request([small_jpeg]))
            assert response.status_code == 429 and "retry" in response.json()["error"]
            assert response.headers["retry-after"] == "5"
    finally:
        svc.close()


def test_a_timeout_sends_the_caller_to_poll_the_whole_job(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    svc = Service(tiny_spec, with_worker=False, classify_timeout_s=0.3, **tiny_settings(tiny_spec))
    try:
        with TestClient(svc.app) as client:
            response = client.post(INFER, json=json_request([small_jpeg] * 3))
            assert response.status_code == 202
            assert "3 of 3 images" in response.json()["detail"]
            job_id = response.json()["job_id"]
            assert response.headers["location"] == f"/v1/jobs/{job_id}"
            svc.thread.start()  # the worker comes late; the reply reader stores the results
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["counts"]["done"] == 3:
                    break
                time.sleep(0.05)
            assert job["counts"] == {"total": 3, "queued": 0, "done": 3, "failed": 0}
    finally:
        svc.close()


def test_openapi_documents_the_v2_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/infer",
    ):
        assert path in paths, path
    infer = paths["/v2/models/{model}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert {"200", "202", "400", "404", "413", "415", "422", "429"} <= set(infer["responses"])
