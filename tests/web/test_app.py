"""The HTTP API end to end, in process: memory backends, a worker thread, the tiny model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlaas.errors import QueueError
from dlaas.jobs import layout
from dlaas.model import ModelSpec
from dlaas.web.uploads import BacklogGate
from tests.service import Service, files, wait_complete
from tests.web.test_validate import png_header_only


def test_job_upload_returns_202_and_completes(
    client: TestClient, photo: Callable[[str], bytes]
) -> None:
    images = [photo("chelsea"), photo("coffee"), photo("rocket")]
    response = client.post("/v1/jobs", files=files(*images))
    assert response.status_code == 202
    body = response.json()
    assert len(body["images"]) == 3
    assert [i["filename"] for i in body["images"]] == ["img0.jpg", "img1.jpg", "img2.jpg"]

    job = wait_complete(client, body["job_id"])
    assert job["status"] == "complete"
    assert job["counts"] == {"total": 3, "queued": 0, "done": 3, "failed": 0}
    for result in job["results"]:
        assert len(result["predictions"]) == 5
        scores = [p["score"] for p in result["predictions"]]
        assert scores == sorted(scores, reverse=True)
        assert {"class_id", "label", "score"} <= set(result["predictions"][0])
        assert result["worker_id"] == "w1"
        assert result["filename"].startswith("img")


def test_event_stream_sends_each_result_then_end(client: TestClient, small_jpeg: bytes) -> None:
    job_id = client.post("/v1/jobs", files=files(small_jpeg, small_jpeg)).json()["job_id"]
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
                if event == "end":
                    break
    kinds = [e for e, _ in events if e != "classifying"]
    assert kinds == ["job", "result", "result", "end"]
    # A "classifying" event, when the stream sees one, comes before that image's result.
    for n, (event, data) in enumerate(events):
        if event == "classifying":
            later = [d["image_id"] for e, d in events[n:] if e == "result"]
            assert data["image_id"] in later
    assert events[-1][1]["done"] == 2 and events[-1][1]["status"] == "complete"


def test_classify_waits_for_top5(client: TestClient, small_jpeg: bytes) -> None:
    response = client.post("/v1/classify", files={"file": ("a.png", small_jpeg, "image/png")})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "done"
    assert len(result["predictions"]) == 5
    assert result["filename"] == "a.png"


def test_compat_endpoint_returns_short_label_as_text(client: TestClient, small_jpeg: bytes) -> None:
    response = client.post("/", files={"myfile": ("x.jpg", small_jpeg, "image/jpeg")})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text
    assert "," not in response.text


@pytest.mark.parametrize(
    ("payload", "status", "error"),
    [
        (b"", 400, "empty_file"),
        (b"just some text, named like a photo\n" * 20, 415, "unsupported_format"),
        (png_header_only(100_000, 100_000), 422, "image_too_large"),
    ],
)
def test_bad_uploads_get_documented_4xx(
    client: TestClient, small_jpeg: bytes, payload: bytes, status: int, error: str
) -> None:
    for url, field in (("/v1/jobs", "files"), ("/v1/classify", "file"), ("/", "myfile")):
        response = client.post(url, files={field: ("cat.jpg", payload, "image/jpeg")})
        assert response.status_code == status, (url, response.text)
        assert response.json()["error"] == error
        assert response.json()["detail"]
    ok = client.post("/", files={"myfile": ("ok.jpg", small_jpeg, "image/jpeg")})
    assert ok.status_code == 200


def test_oversize_upload_is_413(tiny_spec: ModelSpec, small_jpeg: bytes) -> None:
    svc = Service(tiny_spec, max_upload_mb=0.01)
    try:
        with TestClient(svc.app) as client:
            big = small_jpeg + b"\0" * 20_000
            response = client.post("/v1/jobs", files=files(big))
            assert response.status_code == 413
            assert "--max-upload-mb" in response.json()["detail"]
    finally:
        svc.close()


def test_a_bad_file_rejects_the_whole_job_and_stores_nothing(
    service: Service, client: TestClient, small_jpeg: bytes
) -> None:
    response = client.post("/v1/jobs", files=files(small_jpeg, b"not an image at all"))
    assert response.status_code == 415
    assert "file 2" in response.json()["detail"]
    assert service.storage.list("inputs/") == []
    assert service.storage.list("jobs/") == []
    assert service.queue.stats().visible == 0


def test_enqueue_failure_is_an_error_not_a_half_job(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    svc = Service(tiny_spec, with_worker=False)

    def broken_send(_bodies: Any) -> list[str]:
        raise QueueError("queue is down")

    svc.queue.send_batch = broken_send  # type: ignore[method-assign,assignment]
    with TestClient(svc.app) as client:
        response = client.post("/v1/jobs", files=files(small_jpeg, small_jpeg))
    assert response.status_code == 503
    assert response.json()["error"] == "backend_unavailable"
    assert svc.storage.list("inputs/") == []
    assert svc.storage.list("jobs/") == []


def test_classify_timeout_is_202_with_the_job_to_poll(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    svc = Service(tiny_spec, with_worker=False)
    with TestClient(svc.app) as client:
        response = client.post(
            "/v1/classify?timeout_s=0.3", files={"file": ("a.jpg", small_jpeg, "image/jpeg")}
        )
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "queued"
        assert response.headers["location"] == body["location"] == f"/v1/jobs/{body['job_id']}"
        assert "poll GET /v1/jobs/" in body["detail"]
        poll = client.get(response.headers["location"]).json()
        assert poll["counts"]["queued"] == 1


def test_unknown_job_is_404(client: TestClient) -> None:
    for job_id in ("0" * 32, "../../etc/passwd", "nope"):
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 404
        assert response.json()["error"] in ("job_not_found", "not_found")


def test_missing_field_says_which_field(client: TestClient, small_jpeg: bytes) -> None:
    response = client.post("/", files={"wrong": ("x.jpg", small_jpeg, "image/jpeg")})
    assert response.status_code == 400
    assert "myfile" in response.json()["detail"]


def test_health_ready_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/").status_code == 200


def test_results_are_stored_under_the_documented_layout(
    service: Service, client: TestClient, small_jpeg: bytes
) -> None:
    body = client.post("/v1/jobs", files=files(small_jpeg)).json()
    wait_complete(client, body["job_id"])
    image_id = body["images"][0]["image_id"]
    assert service.storage.exists(layout.result_key(body["job_id"], image_id))
    # the input goes once its result is stored (unless --keep-inputs)
    for _ in range(100):
        if not service.storage.exists(layout.input_key(body["job_id"], image_id)):
            break
        time.sleep(0.05)
    assert not service.storage.exists(layout.input_key(body["job_id"], image_id))
    manifest = service.storage.get_json(layout.manifest_key(body["job_id"]))
    assert manifest["images"][0]["filename"] == "img0.jpg"


def test_backlog_over_the_limit_is_429_with_retry_after(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    # Given a service whose backlog gate reads the queue depth on a hand-moved clock...
    svc = Service(tiny_spec, with_worker=False, max_backlog=2)
    now = [100.0]
    svc.app.state.context.uploads.backlog = BacklogGate(svc.queue, 2, clock=lambda: now[0])
    with TestClient(svc.app) as client:
        assert client.post("/v1/jobs", files=files(small_jpeg, small_jpeg)).status_code == 202
        # ...the depth it read (0) stands for a second, though 2 images now wait...
        now[0] += 0.5
        assert client.post("/v1/jobs", files=files(small_jpeg)).status_code == 202
        # ...and once it is re-read (3 waiting), uploads are refused until the queue drains.
        now[0] += 0.5
        response = client.post("/v1/jobs", files=files(small_jpeg))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "5"
        assert response.json() == {
            "error": "busy",
            "detail": "3 images are waiting; retry in a few seconds",
        }
        assert svc.queue.stats().visible == 3


def test_partial_upload_accepts_good_files_and_lists_refused(
    client: TestClient, small_jpeg: bytes
) -> None:
    response = client.post("/v1/jobs?partial=true", files=files(small_jpeg, b"", small_jpeg))
    assert response.status_code == 202
    body = response.json()
    assert len(body["images"]) == 2
    assert [(r["index"], r["status"], r["error"]) for r in body["rejected"]] == [
        (1, 400, "empty_file")
    ]
    job = wait_complete(client, body["job_id"])
    assert job["counts"]["done"] == 2


def test_fastapi_telemetry_is_on_only_where_a_provider_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import trace

    from dlaas.web.app import _telemetry

    # Unconfigured (no SDK, no OTEL_PYTHON_* provider): every hook off, no per-request cost
    assert _telemetry() == {"tracing": False, "metrics": False, "logs": False}

    # With a real tracer provider set before the app is built, tracing stays on
    class TracerProvider(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return trace.NoOpTracer()

    monkeypatch.setattr(trace, "get_tracer_provider", TracerProvider)
    assert _telemetry()["tracing"] is True


def test_a_method_a_path_does_not_take_is_405_naming_the_methods(client: TestClient) -> None:
    response = client.request("TRACE", "/healthz")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert response.headers["allow"] == "GET"
