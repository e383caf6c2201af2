"""``GET /metrics``: it parses, and its counters and histograms match the jobs that ran."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dlaas.jobs import layout, messages, records
from dlaas.model import ModelSpec
from dlaas.web.metrics import Metrics
from tests.service import Service, files, wait_complete

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of the exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def wait_until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class CountingService(Service):
    """A service whose worker records the size of each forward pass; started on demand."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, with_worker=False)
        self.batches: list[int] = []
        classifier = self.worker.classifier
        predict = classifier.predict

        def counting(batch: np.ndarray, top_k: int = 5) -> Sequence[Sequence[Any]]:
            self.batches.append(int(batch.shape[0]))
            return predict(batch, top_k=top_k)

        classifier.predict = counting  # type: ignore[method-assign]

    def start_worker(self) -> None:
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()


@pytest.fixture
def counting_service(tiny_spec: ModelSpec) -> Iterator[CountingService]:
    svc = CountingService(tiny_spec)
    yield svc
    svc.close()


def test_counters_and_histograms_match_a_job(
    counting_service: CountingService, photo: Callable[[str], bytes], small_jpeg: bytes
) -> None:
    svc = counting_service
    images = [photo("chelsea"), photo("coffee"), photo("rocket"), small_jpeg, small_jpeg]
    with TestClient(svc.app) as client:
        before = scrape(client)
        assert value(before, "dlaas_images_accepted_total") == 0
        assert value(before, "dlaas_queue_wait_seconds_count") == 0

        # Given a job of five images, one of which vanishes from storage before a worker
        # reads it (so it fails in the worker and never reaches a forward pass)...
        body = client.post("/v1/jobs", files=files(*images)).json()
        lost = body["images"][4]["image_id"]
        svc.storage.delete(layout.input_key(body["job_id"], lost))
        svc.start_worker()
        job = wait_complete(client, body["job_id"])
        assert job["counts"] == {"total": 5, "queued": 0, "done": 4, "failed": 1}

        # ...the scrape after the job counts exactly that job.
        def replies_seen() -> bool:
            s = scrape(client)
            return value(s, "dlaas_images_done_total") + value(s, "dlaas_images_failed_total") == 5

        wait_until(replies_seen)
        after = scrape(client)

    assert value(after, "dlaas_images_accepted_total") == 5
    assert value(after, "dlaas_images_done_total") == 4
    assert value(after, "dlaas_images_failed_total") == 1
    # Per image: every final reply has a queue wait and an end-to-end time.
    assert value(after, "dlaas_queue_wait_seconds_count") == 5
    assert value(after, "dlaas_end_to_end_seconds_count") == 5
    assert value(after, "dlaas_end_to_end_seconds_bucket", le="+Inf") == 5
    assert value(after, "dlaas_end_to_end_seconds_sum") > 0
    # Per batch: one observation per forward pass, covering the four decoded images.
    assert sum(svc.batches) == 4
    assert value(after, "dlaas_inference_batch_seconds_count") == len(svc.batches)
    assert value(after, "dlaas_inference_batch_seconds_sum") > 0
    assert value(after, "dlaas_batch_size_images_count") == len(svc.batches)
    assert value(after, "dlaas_batch_size_images_sum") == 4
    # Gauges come from the queue (no controller in this app: no worker gauges).
    assert value(after, "dlaas_queue_visible_messages") == 0
    assert value(after, "dlaas_queue_in_flight_messages") == 0
    assert value(after, "dlaas_queue_dead_lettered_messages") == 0
    assert value(after, "dlaas_scaling_mode", mode="external") == 1
    assert not any(name.startswith("dlaas_workers_") for name, _ in after)


def test_queue_gauges_show_a_backlog(counting_service: CountingService, small_jpeg: bytes) -> None:
    with TestClient(counting_service.app) as client:
        client.post("/v1/jobs", files=files(small_jpeg, small_jpeg, small_jpeg))
        samples = scrape(client)
    assert value(samples, "dlaas_queue_visible_messages") == 3
    assert value(samples, "dlaas_images_accepted_total") == 3
    assert value(samples, "dlaas_images_done_total") == 0


def reply(
    image_id: str, batch: messages.BatchFigures | None = None, status: str = "done"
) -> messages.Reply:
    if status == "classifying":
        return messages.Progress("j", image_id)
    if status == "cancelled":
        return messages.Cancelled("j", image_id)
    record = records.result_record(
        job_id="j",
        image_id=image_id,
        status="done" if status == "done" else "failed",
        model="m",
        worker_id="w",
        timings_ms={"queue_wait": 40.0},
        enqueued_at=1000.0,
    )
    record["completed_at"] = 1000.25
    return messages.Finished(record, stored=True, batch=batch)


def test_a_batch_is_observed_once_from_the_reply_that_carries_it() -> None:
    metrics = Metrics()
    first = {"infer_ms": 31.5, "size": 3.0}
    second = {"infer_ms": 12.25, "size": 2.0}
    for r in (
        reply("a", first),
        reply("d", second),
        reply("b"),
        reply("e"),
        reply("c"),
        reply("f", status="failed"),  # failed before inference: no batch figures
        reply("g", status="classifying"),  # progress only: not counted
    ):
        metrics.observe_reply(r)
    samples = parse(metrics.render({})[0].decode())

    assert value(samples, "dlaas_images_done_total") == 5
    assert value(samples, "dlaas_images_failed_total") == 1
    assert value(samples, "dlaas_inference_batch_seconds_count") == 2
    assert value(samples, "dlaas_inference_batch_seconds_sum") == pytest.approx(0.04375)
    assert value(samples, "dlaas_batch_size_images_sum") == 5
    assert value(samples, "dlaas_queue_wait_seconds_count") == 6
    assert value(samples, "dlaas_queue_wait_seconds_bucket", le="0.05") == 6
    assert value(samples, "dlaas_end_to_end_seconds_bucket", le="0.25") == 6


def test_gauges_follow_the_controller_stats() -> None:
    stats: dict[str, Any] = {
        "mode": "elastic",
        "queue": {"visible": 120, "in_flight": 32, "oldest_age_s": 4.5, "dead_lettered": 2},
        "workers": {"desired": 4, "running": 2, "starting": 2, "draining": 1},
        "history": [],
    }
    body, content_type = Metrics().render(stats)
    samples = parse(body.decode())
    assert content_type.startswith("text/plain; version=0.0.4")
    assert value(samples, "dlaas_queue_visible_messages") == 120
    assert value(samples, "dlaas_queue_in_flight_messages") == 32
    assert value(samples, "dlaas_queue_oldest_message_age_seconds") == 4.5
    assert value(samples, "dlaas_queue_dead_lettered_messages") == 2
    assert value(samples, "dlaas_workers_desired") == 4
    assert value(samples, "dlaas_workers_running") == 2
    assert value(samples, "dlaas_workers_starting") == 2
    assert value(samples, "dlaas_workers_draining") == 1
    assert value(samples, "dlaas_scaling_mode", mode="elastic") == 1


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.images_accepted(7)
    assert value(parse(a.render({})[0].decode()), "dlaas_images_accepted_total") == 7
    assert value(parse(b.render({})[0].decode()), "dlaas_images_accepted_total") == 0
