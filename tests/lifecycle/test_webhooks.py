"""Completion webhooks: payload and signature, retries, delivery across a crash, the
SSRF guard."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from dlaas.jobs import layout
from dlaas.lifecycle.guard import WebhookRefused, check_callback, is_public
from dlaas.model import ModelSpec
from tests.lifecycle.receiver import Receiver
from tests.service import Service, files
from tests.support import ServeProcess

SECRET = "s3cret-for-tests"
PAYLOAD_KEYS = {
    "event_id", "type", "job_id", "status", "counts", "results_url", "created_at", "finished_at",
}  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def webhook_service(spec: ModelSpec, **overrides: Any) -> Service:
    settings: dict[str, Any] = {
        "webhook_allow_hosts": "127.0.0.1",
        "webhook_secret": SECRET,
        "webhook_backoff_s": 0.2,
        **overrides,
    }
    return Service(spec, **settings)


def check_signature(headers: dict[str, str], body: bytes) -> None:
    """What a receiver does, written out from the documented header format."""
    fields = dict(part.split("=", 1) for part in headers["Dlaas-Signature"].split(","))
    assert abs(time.time() - int(fields["t"])) < 60
    expected = hmac.new(SECRET.encode(), fields["t"].encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(fields["v1"], expected.hexdigest())
    forged = hmac.new(b"other", fields["t"].encode() + b"." + body, hashlib.sha256)
    assert fields["v1"] != forged.hexdigest()


def test_the_receiver_gets_the_documented_payload_signed(
    tiny_spec: ModelSpec, receiver: Receiver, small_jpeg: bytes, photo: Any
) -> None:
    svc = webhook_service(tiny_spec)
    with TestClient(svc.app) as client:
        callback = f"{receiver.url}/hooks/dlaas?tenant=7"
        response = client.post(
            "/v1/jobs", params={"callback_url": callback}, files=files(small_jpeg, photo("coffee"))
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        [delivery] = receiver.wait_for(1, timeout_s=30)
        time.sleep(1.5)  # and no second one follows
        assert len(receiver.deliveries) == 1
    svc.close()
    assert delivery.path == "/hooks/dlaas?tenant=7"
    assert delivery.headers["Content-Type"] == "application/json"
    check_signature(delivery.headers, delivery.body)
    body = delivery.json()
    assert set(body) == PAYLOAD_KEYS
    assert delivery.headers["Dlaas-Event-Id"] == body["event_id"]
    assert body["type"] == "job.finished"
    assert body["job_id"] == job_id
    assert body["status"] == "complete"
    assert body["counts"] == {"total": 2, "queued": 0, "done": 2, "failed": 0}
    assert body["results_url"] == f"http://testserver/v1/jobs/{job_id}"
    assert not svc.storage.exists(layout.webhook_key(job_id))  # the outbox is empty


def test_a_receiver_that_fails_twice_gets_the_event_on_the_third_try(
    tiny_spec: ModelSpec, small_jpeg: bytes
) -> None:
    receiver = Receiver(fail_first=2)
    svc = webhook_service(tiny_spec)
    try:
        with TestClient(svc.app) as client:
            response = client.post(
                "/v1/jobs", params={"callback_url": receiver.url}, files=files(small_jpeg)
            )
            job_id = response.json()["job_id"]
            deliveries = receiver.wait_for(3, timeout_s=30)
            time.sleep(1.5)
    finally:
        svc.close()
        receiver.close()
    assert [d.status for d in receiver.deliveries] == [500, 500, 204]
    assert len({d.json()["event_id"] for d in deliveries}) == 1  # one event, three tries
    for d in deliveries:
        check_signature(d.headers, d.body)
    assert not svc.storage.exists(layout.webhook_key(job_id))


def test_gives_up_after_the_documented_attempts(tiny_spec: ModelSpec, small_jpeg: bytes) -> None:
    receiver = Receiver(fail_first=100)
    svc = webhook_service(tiny_spec, webhook_max_attempts=3, webhook_backoff_s=0.1)
    try:
        with TestClient(svc.app) as client:
            response = client.post(
                "/v1/jobs", params={"callback_url": receiver.url}, files=files(small_jpeg)
            )
            job_id = response.json()["job_id"]
            receiver.wait_for(3, timeout_s=30)
            time.sleep(1.5)
    finally:
        svc.close()
        receiver.close()
    assert len(receiver.deliveries) == 3
    record = svc.storage.get_json(layout.webhook_key(job_id))
    assert record["state"] == "gave_up" and record["last_error"] == "HTTP 500"


def test_a_cancelled_job_is_reported_once_nothing_is_in_flight(
    tiny_spec: ModelSpec, receiver: Receiver, small_jpeg: bytes
) -> None:
    svc = webhook_service(tiny_spec)
    svc.worker.stop()  # the worker runs by hand below
    with TestClient(svc.app) as client:
        response = client.post(
            "/v1/jobs", params={"callback_url": receiver.url}, files=files(small_jpeg, small_jpeg)
        )
        job_id = response.json()["job_id"]
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        time.sleep(1.5)
        assert receiver.deliveries == []  # cancelling: two messages still queued
        svc.worker.process(svc.queue.receive(max_messages=8, wait_time_s=1))
        [delivery] = receiver.wait_for(1, timeout_s=30)
    svc.close()
    body = delivery.json()
    assert body["status"] == "cancelled"
    assert body["counts"] == {"total": 2, "queued": 0, "done": 0, "failed": 0, "cancelled": 2}


@pytest.mark.parametrize(
    ("allow", "url", "why"),
    [
        ("", "http://127.0.0.1:9/x", "off on this service"),
        ("hooks.example.com", "http://127.0.0.1:9/x", "not in --webhook-allow-hosts"),
        ("*", "http://127.0.0.1:9/x", "non-public address"),
        ("*", "http://localhost:9/x", "non-public address"),
        ("127.0.0.1", "ftp://127.0.0.1/x", "http:// or https://"),
        ("127.0.0.1", "http://user:pw@127.0.0.1/x", "user name or password"),
    ],
)
def test_a_disallowed_callback_is_refused_at_submit(
    tiny_spec: ModelSpec, small_jpeg: bytes, allow: str, url: str, why: str
) -> None:
    svc = webhook_service(tiny_spec, webhook_allow_hosts=allow, with_worker=False)
    with TestClient(svc.app) as client:
        response = client.post("/v1/jobs", params={"callback_url": url}, files=files(small_jpeg))
    svc.close()
    assert response.status_code == 400
    assert response.json()["error"] == "callback_refused"
    assert why in response.json()["detail"]
    assert svc.storage.list("inputs/") == svc.storage.list("jobs/") == []  # nothing stored
    assert svc.storage.list("webhooks/") == []
    assert svc.queue.stats().visible == 0


@pytest.mark.parametrize("allow", ["", "127.0.0.1"])
def test_the_schema_names_callback_url_only_where_webhooks_are_on(
    tiny_spec: ModelSpec, allow: str
) -> None:
    svc = webhook_service(tiny_spec, webhook_allow_hosts=allow, with_worker=False)
    with TestClient(svc.app) as client:
        operation = client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]
    svc.close()
    names = [parameter["name"] for parameter in operation["parameters"]]
    assert ("callback_url" in names) == bool(allow), names
    assert "Idempotency-Key" in names


def fake_dns(table: dict[str, list[str]]) -> Any:
    def resolve(host: str, _port: int) -> list[str]:
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("addresses", "allowed"),
    [
        (["93.184.215.14"], True),
        (["2606:2800:21f:cb07:6820:80da:af6b:8b2c"], True),
        (["10.1.2.3"], False),
        (["172.16.0.9"], False),
        (["192.168.1.1"], False),
        (["169.254.169.254"], False),  # the cloud metadata service
        (["127.0.0.1"], False),
        (["::1"], False),
        (["fe80::1"], False),
        (["fd00::1"], False),
        (["::ffff:127.0.0.1"], False),
        (["100.64.0.1"], False),  # carrier-grade NAT
        (["0.0.0.0"], False),
        (["93.184.215.14", "10.0.0.1"], False),  # any inside address refuses the host
    ],
)
def test_the_guard_refuses_inside_addresses_behind_a_pattern(
    addresses: list[str], allowed: bool
) -> None:
    resolver = fake_dns({"hooks.example.com": addresses})
    url = "https://hooks.example.com/dlaas"
    for allow in (("*",), ("*.example.com",)):
        if allowed:
            assert check_callback(url, allow, resolver).address == addresses[0]
        else:
            with pytest.raises(WebhookRefused, match="non-public"):
                check_callback(url, allow, resolver)
    # an exact entry is the operator saying "this one, inside or not"
    assert check_callback(url, ("hooks.example.com",), resolver).host == "hooks.example.com"
    assert all(is_public(a) for a in addresses) is allowed


def test_a_pattern_matches_subdomains_only() -> None:
    resolver = fake_dns({"a.example.com": ["93.184.215.14"], "example.com": ["93.184.215.14"]})
    assert check_callback("http://a.example.com/", ("*.example.com",), resolver)
    with pytest.raises(WebhookRefused, match="not in"):
        check_callback("http://example.com/", ("*.example.com",), resolver)
    with pytest.raises(WebhookRefused, match="not in"):
        check_callback("http://evil-example.com/", ("*.example.com",), resolver)


@pytest.mark.slow
def test_a_webhook_owed_by_a_killed_web_process_arrives_after_a_restart(
    tmp_path: Path, tiny_spec: ModelSpec, receiver: Receiver, small_jpeg: bytes
) -> None:
    labels = tiny_spec.onnx_path.parent / "labels.txt"
    args = [
        "--model", str(tiny_spec.onnx_path), "--labels", str(labels),
        "--webhook-allow-hosts", "127.0.0.1", "--webhook-secret", SECRET,
    ]  # fmt: skip
    # given a service with no workers: the job waits
    first = ServeProcess(tmp_path / "data", [*args, "--workers", "0"])
    try:
        first.wait_ready()
        response = httpx.post(
            first.url + "/v1/jobs",
            params={"callback_url": receiver.url + "/done"},
            files=files(small_jpeg, small_jpeg),
            timeout=30,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
    finally:
        first.proc.kill()  # when the web process dies before the job finishes
        first.stop()
    assert receiver.deliveries == []
    # then a restarted service finishes the job and sends the webhook it owed
    second = ServeProcess(tmp_path / "data", [*args, "--workers", "1"])
    try:
        second.wait_ready()
        [delivery] = receiver.wait_for(1, timeout_s=60)
        time.sleep(1.5)
        assert len(receiver.deliveries) == 1, second.log()
    finally:
        second.stop()
    assert delivery.json()["job_id"] == job_id
    assert delivery.json()["counts"]["done"] == 2
    check_signature(delivery.headers, delivery.body)
