"""Completion webhooks: an outbox in the object store, signed deliveries, retries.

At submit, an outbox record (``layout.webhook_key``) records the webhook owed, before the job is
enqueued. Every web process (and the controller) runs a ``WebhookDispatcher``: it finds
owed webhooks whose job has finished, POSTs the summary, and deletes the record only
after a 2xx. A process that dies mid-way leaves the record, and another process, or the
same one after a restart, sends it: delivery is at least once, and a receiver drops a
repeat by its ``event_id``.

Signature (``Dlaas-Signature: t=<unix seconds>,v1=<hex>``): HMAC-SHA256 under
``--webhook-secret`` of ``f"{t}."`` followed by the raw body. A receiver recomputes it,
compares in constant time, and rejects a ``t`` too far from its own clock (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from dlaas import __version__
from dlaas.errors import DlaasError, ObjectNotFound
from dlaas.jobs import layout
from dlaas.jobs.records import WebhookOutbox, as_outbox
from dlaas.jobs.store import JobStatus, JobStore
from dlaas.lifecycle.guard import (
    Resolver,
    Target,
    WebhookRefused,
    check_callback,
    parse_allow_hosts,
    resolve,
)
from dlaas.settings import Settings

log = logging.getLogger("dlaas.webhooks")

SIGNATURE_HEADER = "Dlaas-Signature"
EVENT_HEADER = "Dlaas-Event-Id"
EVENT_TYPE = "job.finished"
LEASE_S = 60.0  # a delivery in progress elsewhere is left alone this long
POLL_S = 5.0  # outbox scans; replies this process receives wake it sooner
MIN_GAP_S = 0.5  # between scans
GAVE_UP_RECHECK_S = 3600.0  # a given-up record is only read again this rarely
MAX_CHECK_INTERVAL_S = 30.0  # an unfinished job is looked at again within this


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Dlaas-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: bytes, header: str, body: bytes, *, now: float, tolerance_s: float = 300
) -> bool:
    """What a receiver does: a valid MAC and a timestamp within ``tolerance_s``."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def payload(record: WebhookOutbox, status: JobStatus, created_at: float) -> dict[str, Any]:
    """The documented body (docs/api.md, "Completion webhooks")."""
    return {
        "event_id": record["event_id"],
        "type": EVENT_TYPE,
        "job_id": record["job_id"],
        "status": status.state,
        "counts": status.counts,
        "results_url": record["results_url"],
        "created_at": created_at,
        "finished_at": time.time(),
    }


class WebhookDispatcher:
    """Sends owed webhooks from any process; see the module docstring."""

    def __init__(
        self,
        jobs: JobStore,
        *,
        secret: bytes,
        allow_hosts: Sequence[str],
        max_attempts: int = 8,
        backoff_s: float = 2.0,
        poll_s: float = POLL_S,
        timeout_s: float = 10.0,
        resolver: Resolver = resolve,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.jobs = jobs
        self.storage = jobs.storage
        self.secret = secret
        self.allow_hosts = tuple(allow_hosts)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self.resolver = resolver
        self.clock = clock
        self.name = uuid.uuid4().hex[:12]
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False)
        self._next_check: dict[str, tuple[float, float]] = {}  # job -> (when, interval)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._client.close()

    def wake(self, job_id: str | None = None) -> None:
        """A job may have finished: look now rather than at the next poll."""
        if job_id is not None:
            self._next_check.pop(job_id, None)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except DlaasError as exc:
                log.warning("webhook_scan_failed", extra={"error": str(exc)})
            # At most a scan per MIN_GAP_S however many replies wake it; else wait for the
            # next due retry or check, a wake, or the poll.
            self._stop.wait(MIN_GAP_S)
            self._wake.wait(max(0.0, min(self.poll_s, self._soonest() - time.monotonic())))
            self._wake.clear()

    def _soonest(self) -> float:
        """The monotonic time of the next retry or check this process knows of."""
        times = [when for when, _interval in self._next_check.values()]
        return min(times, default=time.monotonic() + self.poll_s)

    def run_once(self) -> int:
        """One pass over the outbox; returns the webhooks delivered."""
        delivered = 0
        for key in self.storage.list(layout.WEBHOOKS):
            if self._stop.is_set():
                break
            job_id = layout.job_of_webhook(key)
            when, _interval = self._next_check.get(job_id, (0.0, 0.0))
            if when > time.monotonic():
                continue  # not due: not even read
            try:
                record = as_outbox(self.storage.get_json(key))
            except ObjectNotFound:
                continue
            if self._due(record) and self._attempt(key, record):
                delivered += 1
        return delivered

    def _due(self, record: WebhookOutbox) -> bool:
        """Pending, and neither waiting for a retry nor leased by another process."""
        if record.get("state") != "pending":
            self._later(record["job_id"], GAVE_UP_RECHECK_S)
            return False
        wait_s = max(record.get("next_attempt_at", 0), record.get("lease_until", 0)) - self.clock()
        if wait_s > 0:
            self._later(record["job_id"], wait_s)
            return False
        return True

    def _later(self, job_id: str, delay_s: float) -> None:
        self._next_check[job_id] = (time.monotonic() + delay_s, delay_s)

    def _attempt(self, key: str, record: WebhookOutbox) -> bool:
        job_id = record["job_id"]
        found = self.jobs.settled_status(job_id)
        if found is None:  # purged or expired: nobody to tell
            self.storage.delete(key)
            return False
        manifest, status = found
        if not status.finished:
            _when, interval = self._next_check.get(job_id, (0.0, 0.5))
            self._later(job_id, min(MAX_CHECK_INTERVAL_S, interval * 2))
            return False
        self._next_check.pop(job_id, None)
        record["lease_until"] = self.clock() + LEASE_S
        record["lease_owner"] = self.name
        self.storage.put_json(key, record)
        error = self._deliver(record, payload(record, status, manifest["created_at"]))
        if error is None:
            self.storage.delete(key)
            log.info(
                "webhook_delivered",
                extra={
                    "job_id": job_id,
                    "event_id": record["event_id"],
                    "attempt": record["attempts"] + 1,
                },
            )
            return True
        record["attempts"] += 1
        record["lease_until"] = 0.0
        record["last_error"] = error
        if record["attempts"] >= self.max_attempts:
            record["state"] = "gave_up"
            log.error("webhook_gave_up", extra={"job_id": job_id, "error": error})
        else:
            delay = self.backoff_s * 2 ** (record["attempts"] - 1)
            record["next_attempt_at"] = self.clock() + delay
            self._later(job_id, delay)
            log.warning(
                "webhook_retry",
                extra={
                    "job_id": job_id,
                    "attempt": record["attempts"],
                    "retry_in_s": delay,
                    "error": error,
                },
            )
        self.storage.put_json(key, record)
        return False

    def _deliver(self, record: WebhookOutbox, body_fields: dict[str, Any]) -> str | None:
        """POST the signed payload; None on a 2xx, else what went wrong."""
        try:
            target = check_callback(record["url"], self.allow_hosts, self.resolver)
        except WebhookRefused as exc:
            return str(exc)
        body = json.dumps(body_fields, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"dlaas-webhooks/{__version__}",
            EVENT_HEADER: record["event_id"],
            SIGNATURE_HEADER: sign(self.secret, int(self.clock()), body),
        }
        url, extensions = _pinned(target, headers)
        try:
            response = self._client.post(url, content=body, headers=headers, extensions=extensions)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


def _pinned(target: Target, headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The URL with the checked address in place of the host, and the host kept for
    ``Host`` and TLS (SNI and certificate checks), so DNS is not asked a second time."""
    parts = httpx.URL(target.url)
    address = f"[{target.address}]" if ":" in target.address else target.address
    default_port = 443 if target.scheme == "https" else 80
    headers["Host"] = target.host if target.port == default_port else f"{target.host}:{target.port}"
    url = str(parts.copy_with(host=address.strip("[]"), port=target.port))
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return url, extensions


def webhooks_allowed(settings: Settings) -> tuple[str, ...]:
    """The allowed hosts; empty (webhooks off) unless a secret to sign with is set too."""
    if settings.webhook_secret is None:
        return ()
    return parse_allow_hosts(settings.webhook_allow_hosts)


def build_dispatcher(settings: Settings, jobs: JobStore) -> WebhookDispatcher | None:
    allow = webhooks_allowed(settings)
    if not allow or settings.webhook_secret is None:
        return None
    return WebhookDispatcher(
        jobs,
        secret=settings.webhook_secret.get_secret_value().encode(),
        allow_hosts=allow,
        max_attempts=settings.webhook_max_attempts,
        backoff_s=settings.webhook_backoff_s,
    )
