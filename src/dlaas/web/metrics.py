"""Prometheus metrics for ``GET /metrics``, aggregated in the web process.

Workers are separate processes (or machines), so they keep no metrics of their own.
Each final reply notification already carries the image's timings (queue wait, batch
inference time, batch size, enqueue and completion times), so this process counts and
observes them as the replies arrive: no multiprocess mode and no shared directory.
Queue and worker gauges are read at scrape time from the stats snapshot the app passes
to :meth:`Metrics.render`. See docs/observability.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from dlaas.jobs.messages import Finished, Reply

log = logging.getLogger("dlaas.web")

# Seconds, from a few ms (a warm batch) to minutes (a backlog waiting for workers).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

QUEUE_GAUGES = {
    "visible": ("dlaas_queue_visible_messages", "Messages waiting in the input queue."),
    "in_flight": ("dlaas_queue_in_flight_messages", "Messages received by a worker, not deleted."),
    "dead_lettered": ("dlaas_queue_dead_lettered_messages", "Messages in the dead-letter queue."),
    "oldest_age_s": (
        "dlaas_queue_oldest_message_age_seconds",
        "Age of the oldest waiting message.",
    ),
}
WORKER_GAUGES = {
    "desired": ("dlaas_workers_desired", "Workers the scaling policy wants."),
    "running": ("dlaas_workers_running", "Workers that have loaded the model and take work."),
    "starting": ("dlaas_workers_starting", "Workers launched but not yet ready."),
    "draining": ("dlaas_workers_draining", "Workers finishing their batch before exiting."),
}


class _StatsCollector(Collector):
    """Queue and worker gauges from the stats snapshot of the scrape in progress."""

    def __init__(self) -> None:
        self.stats: Mapping[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        for section, gauges in (("queue", QUEUE_GAUGES), ("workers", WORKER_GAUGES)):
            values = self.stats.get(section) or {}
            for key, (name, documentation) in gauges.items():
                value = values.get(key)
                # Absent means "not known here" (no controller in this process): omit it
                # rather than report a misleading zero.
                if isinstance(value, int | float) and not isinstance(value, bool):
                    yield GaugeMetricFamily(name, documentation, value=float(value))
        mode = self.stats.get("mode")
        if isinstance(mode, str):
            info = GaugeMetricFamily(
                "dlaas_scaling_mode",
                "How workers are managed (1 for the current mode).",
                labels=["mode"],
            )
            info.add_metric([mode], 1.0)
            yield info


class Metrics:
    """One registry per app, so several apps can live in one process (tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("dlaas_images_accepted", "Images stored and enqueued.", registry=r)
        self.done = Counter("dlaas_images_done", "Images classified.", registry=r)
        self.failed = Counter(
            "dlaas_images_failed", "Images that could not be classified.", registry=r
        )
        self.queue_wait = Histogram(
            "dlaas_queue_wait_seconds",
            "Time an image waited in the input queue before a worker took it.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference = Histogram(
            "dlaas_inference_batch_seconds",
            "Forward-pass time of one batch.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "dlaas_batch_size_images",
            "Images per forward pass.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "dlaas_end_to_end_seconds",
            "From enqueue to stored result, per image.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._stats = _StatsCollector()
        r.register(self._stats)
        self._render_lock = threading.Lock()

    def images_accepted(self, n: int) -> None:
        self.accepted.inc(n)

    def accepted_hook(
        self, then: Callable[[str | None], None] | None
    ) -> Callable[[int, str | None], None]:
        """What a commit calls with its image count and model: counted here, then
        ``then(model)`` (the controller's wake, so an idle pool starts at once)."""

        def accepted(n: int, model: str | None) -> None:
            self.images_accepted(n)
            if then is not None:
                then(model)

        return accepted

    def observe_reply(self, reply: Reply) -> None:
        """Count one result, observe its timings and log its arrival.

        The log line closes an image's trail: ``image_accepted`` (web), ``image_done``
        (worker), then ``result_received`` here. Progress and cancelled replies are
        skipped: their images were never classified.
        """
        if not isinstance(reply, Finished):
            return
        result = reply.result
        status = result["status"]
        (self.done if status == "done" else self.failed).inc()
        wait_ms = result["timings_ms"].get("queue_wait")
        if wait_ms is not None:
            self.queue_wait.observe(max(0.0, wait_ms) / 1000)
        end_to_end_s = None
        enqueued_at, completed_at = result["enqueued_at"], result["completed_at"]
        if enqueued_at and completed_at:
            end_to_end_s = max(0.0, completed_at - enqueued_at)
            self.end_to_end.observe(end_to_end_s)
        if reply.batch is not None:  # the one reply per batch that carries its figures
            self.inference.observe(reply.batch["infer_ms"] / 1000)
            self.batch_size.observe(reply.batch["size"])
        log.info(
            "result_received",
            extra={
                "job_id": reply.job_id,
                "image_id": reply.image_id,
                "status": status,
                "end_to_end_ms": None if end_to_end_s is None else round(end_to_end_s * 1000, 1),
            },
        )

    def render(self, stats: Mapping[str, Any]) -> tuple[bytes, str]:
        """The exposition text, with gauges taken from ``stats`` (the ``/v1/stats`` body)."""
        with self._render_lock:
            self._stats.stats = stats
            try:
                return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4
            finally:
                self._stats.stats = {}
