"""How a worker process starts: ``dlaas worker`` and the local fork server's children.

Both end in ``run``: JSON logs, then ``run_worker``. Settings come from the command
line (the CLI) or from the ``DLAAS_*`` environment alone (a forked child).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Any

from dlaas.errors import DlaasError
from dlaas.logs import configure_logging
from dlaas.settings import Settings, load_settings
from dlaas.worker.loop import Worker

log = logging.getLogger("dlaas.worker")


def run(settings: Settings) -> int:
    """Run one worker until it exits; return its exit code."""
    configure_logging(settings.log_level)
    return run_worker(settings)


def main() -> int:
    """A worker configured by its environment, with the CLI's exit codes for errors."""
    try:
        return run(load_settings())
    except DlaasError as exc:
        print(f"dlaas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def run_worker(settings: Any) -> int:
    """Entry point of ``dlaas worker``: load the model once, then loop."""
    from dlaas.components import model_spec_from, open_queue_from, open_storage_from
    from dlaas.model import Classifier
    from dlaas.worker.preload import classifier_for

    worker_id = settings.worker_id or default_worker_id()
    t0 = time.monotonic()
    spec = model_spec_from(settings)
    preloaded = classifier_for(spec.onnx_path, settings.intra_op_threads)
    classifier = preloaded or Classifier(spec, intra_op_num_threads=settings.intra_op_threads)
    log.info(
        "model_loaded",
        extra={
            "worker_id": worker_id,
            "model": spec.name,
            "preloaded": preloaded is not None,
            "ms": round((time.monotonic() - t0) * 1000),
        },
    )
    storage = open_storage_from(settings)
    queue = open_queue_from(settings)
    protection = _scale_in_protection(worker_id, settings)
    worker = Worker(
        storage=storage,
        queue=queue,
        classifier=classifier,
        worker_id=worker_id,
        batch_size=settings.batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        idle_timeout_s=settings.idle_timeout_s,
        visibility_timeout_s=settings.visibility_timeout_s,
        on_busy=protection.set if protection is not None else None,
        parent_pid=settings.parent_pid,
    )
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        if protection is not None:
            protection.close()
        queue.close()
        storage.close()


def _scale_in_protection(worker_id: str, settings: Any) -> Any:
    """In an Auto Scaling group, protect this instance while it holds messages.

    Only EC2 worker IDs (``i-...``) can be protected; elsewhere this is None and the
    worker never imports boto3.
    """
    if not worker_id.startswith("i-"):
        return None
    from dlaas.aws.protection import ScaleInProtection

    return ScaleInProtection.for_worker(worker_id, region=settings.aws_region)
