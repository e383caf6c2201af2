"""The live-service harness shared across test folders: an app on fresh memory backends
(or a given store) with a worker thread, and helpers to upload and wait for jobs.

The ``service`` and ``client`` fixtures in ``tests/conftest.py`` build on ``Service``;
a test needing other settings builds its own ``Service(spec, **settings)``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from typing import Any

from fastapi.testclient import TestClient

from dlaas.assemble import build_app
from dlaas.model import Classifier, ModelSpec
from dlaas.queue import open_queue
from dlaas.queue.base import Queue
from dlaas.settings import load_settings
from dlaas.storage import open_storage
from dlaas.storage.base import Storage
from dlaas.worker import Worker, WorkerOptions


class Service:
    """An app plus a worker thread; memory backends unless ``storage`` is given."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        with_worker: bool = True,
        storage: Storage | None = None,
        worker_id: str = "w1",
        **overrides: Any,
    ) -> None:
        name = uuid.uuid4().hex[:8]
        self.storage: Storage = storage or open_storage(f"memory://{name}")
        self.queue: Queue = open_queue(f"memory://{name}", name="input")
        # An empty model repository: the worker thread runs ``spec`` as its own model,
        # whatever the checkout's .dlaas/models holds.
        self._models = tempfile.mkdtemp(prefix="dlaas-models-")
        overrides.setdefault("model_dir", self._models)
        self.settings = load_settings(**overrides)
        self.app = build_app(self.settings, self.storage, self.queue)
        options = WorkerOptions(
            idle_timeout_s=3600,
            receive_wait_s=0.1,
            max_batch_delay_ms=5,
            keep_inputs=self.settings.keep_inputs,
        )
        self.worker = Worker(
            storage=self.storage,
            queue=self.queue,
            classifier=Classifier(spec),
            worker_id=worker_id,
            options=options,
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        if with_worker:
            self.thread.start()

    def close(self) -> None:
        self.worker.stop()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        shutil.rmtree(self._models, ignore_errors=True)


def files(*payloads: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"img{n}.jpg", p, "image/jpeg")) for n, p in enumerate(payloads)]


def wait_complete(client: TestClient, job_id: str) -> dict[str, Any]:
    """Follow the job's event stream to its end, then read the job."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event: end"):
                break
    body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return body
