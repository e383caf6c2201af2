"""``dlaas serve`` and ``dlaas controller``: run what ``dlaas.assemble`` builds, stop it cleanly."""

from __future__ import annotations

import logging
import signal
import threading

from dlaas.assemble import (
    build_app,
    build_controller,
    build_pools,
    model_spec_from,
    open_limits_from,
    open_queue_from,
    open_storage_from,
)
from dlaas.jobs import layout
from dlaas.jobs.store import JobStore
from dlaas.lifecycle.janitor import Janitor
from dlaas.lifecycle.webhooks import build_dispatcher
from dlaas.settings import Settings
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.serve")


def run_serve(settings: Settings) -> int:
    """Web tier + controller + local workers in one command, zero configuration."""
    import uvicorn

    from dlaas.web.security import check_exposure, open_keyring

    check_exposure(settings)
    open_keyring(settings)  # a missing or bad keys file stops here, before the model build
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    spec = model_spec_from(settings)  # build once here, before any worker starts
    storage = open_storage_from(settings)
    # Idempotency-Key claims need an atomic create-if-absent; says so if the store lacks it.
    storage.probe_atomic_create(layout.probe_key())
    queue = open_queue_from(settings)
    pools = build_pools(settings, queue, storage)
    limits = open_limits_from(settings)
    stop = threading.Event()
    thread = threading.Thread(target=pools.run, args=(stop,), name="controllers", daemon=True)
    app = build_app(
        settings,
        storage,
        queue,
        stats_provider=pools.stats,
        on_enqueued=pools.wake,
        workers_readiness=pools.readiness,
        limits=limits,
        queue_for=pools.queue_for,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            # No "server: uvicorn": an answer need not name the software behind it, and
            # every client reads one header line fewer.
            server_header=False,
        )
    )
    _log_serving(settings, spec.name, limits.where)
    # uvicorn re-raises the stop signal once it has shut down; with these handlers in
    # place that lands here instead of killing the process before workers are drained.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread.start()
    janitor = start_janitor(settings, storage)
    try:
        server.run()
    finally:
        stop.set()
        thread.join(timeout=10)
        if janitor is not None:
            janitor.stop()
        pools.close()
        limits.close()
        queue.close()
        storage.close()
    return 0


def _log_serving(settings: Settings, model: str, owner_limits: str) -> None:
    bounds = (
        f"fixed, {settings.workers} workers"
        if settings.workers is not None
        else f"elastic, {settings.min_workers}..{settings.max_workers} workers"
    )
    log.info(
        "serving",
        extra={
            "url": f"http://{settings.host}:{settings.port}",
            "mode": bounds,
            "model": model,
            "storage": settings.storage_url,
            "queue": settings.queue_url,
            "owner_limits": owner_limits,
        },
    )


def run_controller(settings: Settings) -> int:
    """The autoscaler alone, for deployments where the web tier runs elsewhere."""
    storage = open_storage_from(settings)
    queue = open_queue_from(settings)
    if settings.launcher == "local":
        model_spec_from(settings)
    controller = build_controller(settings, queue, storage)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    janitor = start_janitor(settings, storage)
    # Webhooks owed by web processes that died are sent from here too.
    dispatcher = build_dispatcher(settings, JobStore(storage, queue))
    if dispatcher is not None:
        dispatcher.start()
    try:
        controller.run(stop)
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        if janitor is not None:
            janitor.stop()
        controller.launcher.close()
        queue.close()
        storage.close()
    return 0


def start_janitor(settings: Settings, storage: Storage) -> Janitor | None:
    """The retention janitor runs beside the controller; ``--retention-h 0`` turns it off."""
    if settings.retention_h <= 0:
        return None
    janitor = Janitor(
        storage,
        retention_s=settings.retention_h * 3600,
        interval_s=settings.janitor_interval_s,
    )
    janitor.start()
    return janitor
