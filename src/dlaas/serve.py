"""``dlaas serve`` and ``dlaas controller``: settings -> backends, launcher, controller, app."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from dlaas.components import model_spec_from, open_queue_from, open_storage_from
from dlaas.errors import ConfigError
from dlaas.settings import COMMON, MODEL, REMOTE_WORKER, WORKER, Settings

log = logging.getLogger("dlaas.serve")

FIXED_MODE_IDLE_TIMEOUT_S = 10**9  # fixed-mode workers never leave on their own


def worker_env(settings: Settings, *, fixed: bool) -> dict[str, str]:
    """The environment of a local worker: this process's, plus every worker setting.

    Settings travel as their ``DLAAS_*`` twins, so a worker started by hand with the
    same variables behaves exactly like one started by ``serve``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLAAS_")}
    env.update(settings.to_env(n for n in (*COMMON, *MODEL, *WORKER) if n != "worker_id"))
    # A local worker must not outlive `dlaas serve`, even one killed with SIGKILL. Its
    # parent may be the fork server, which lives as long as any worker does, so the
    # worker watches this process, not its parent.
    env["DLAAS_PARENT_PID"] = str(os.getpid())
    env["DLAAS_DATA_DIR"] = str(settings.data_dir.resolve())
    env["DLAAS_STORAGE"] = settings.storage_url
    env["DLAAS_QUEUE"] = settings.queue_url
    env["DLAAS_MODEL_DIR"] = str(settings.model_cache_dir.resolve())
    if settings.model is not None and settings.labels is not None:
        env["DLAAS_MODEL"] = str(settings.model.resolve())
        env["DLAAS_LABELS"] = str(settings.labels.resolve())
    if fixed:
        env["DLAAS_IDLE_TIMEOUT_S"] = str(FIXED_MODE_IDLE_TIMEOUT_S)
    return env


def build_controller(settings: Settings, queue: Any, storage: Any) -> Any:
    """The controller and its launcher; fixed mode is the same loop with min = max = N."""
    from dlaas.scaling.controller import Controller
    from dlaas.scaling.policy import PolicyConfig

    fixed = settings.workers is not None
    if fixed:
        lo = hi = int(settings.workers or 0)
    else:
        lo, hi = settings.min_workers, settings.max_workers
    config = PolicyConfig(
        target_backlog_per_worker=settings.backlog_target,
        min_workers=lo,
        max_workers=hi,
        upscale_delay_s=settings.upscale_delay_s,
        downscale_delay_s=settings.downscale_delay_s,
        max_message_age_s=settings.max_message_age_s,
    )
    launcher = build_launcher(settings, storage, fixed=fixed)
    return Controller(queue, launcher, config, interval_s=settings.scale_interval_s)


def build_launcher(settings: Settings, storage: Any, *, fixed: bool) -> Any:
    if settings.launcher == "local":
        from dlaas.scaling.launchers.local import LocalLauncher, health_probe

        return LocalLauncher(
            env=worker_env(settings, fixed=fixed),
            probe=health_probe(storage),
            preload=True,
        )
    if settings.launcher == "asg":
        from dlaas.scaling.launchers.asg import AsgLauncher

        if not settings.asg_name:
            raise ConfigError("--launcher asg needs --asg-name; see docs/aws.md")
        return AsgLauncher(
            group_name=settings.asg_name, storage=storage, region=settings.aws_region
        )

    from dlaas.aws.userdata import render_user_data
    from dlaas.scaling.launchers.ec2 import Ec2Launcher

    groups = [g.strip() for g in (settings.ec2_security_group_ids or "").split(",") if g.strip()]
    user_data = render_user_data(
        storage_url=settings.storage_url,
        queue_url=settings.queue_url,
        package_spec=settings.worker_package,
        s3_endpoint_url=settings.s3_endpoint_url,
        sqs_endpoint_url=settings.sqs_endpoint_url,
        aws_region=settings.aws_region,
        extra_env=worker_settings_env(settings),
    )
    return Ec2Launcher(
        cluster=settings.cluster_name,
        storage=storage,
        user_data=user_data,
        image_id=settings.ec2_image_id,
        launch_template=settings.ec2_launch_template,
        instance_type=settings.ec2_instance_type,
        subnet_id=settings.ec2_subnet_id,
        security_group_ids=groups,
        instance_profile=settings.ec2_instance_profile,
        region=settings.aws_region,
    )


def worker_settings_env(settings: Settings) -> dict[str, str]:
    """The worker tuning a remote worker should share with this controller."""
    return settings.to_env(REMOTE_WORKER)


def run_serve(settings: Settings) -> int:
    """Web tier + controller + local workers in one command, zero configuration."""
    import uvicorn

    from dlaas.web import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    spec = model_spec_from(settings)  # build once here, before any worker starts
    storage = open_storage_from(settings)
    queue = open_queue_from(settings)
    controller = build_controller(settings, queue, storage)
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,), name="controller", daemon=True)
    app = create_app(
        settings,
        storage,
        queue,
        stats_provider=controller.stats,
        on_enqueued=controller.wake,
        workers_readiness=controller.launcher.readiness,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
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
            "model": spec.name,
            "storage": settings.storage_url,
            "queue": settings.queue_url,
        },
    )
    # uvicorn re-raises the stop signal once it has shut down; with these handlers in
    # place that lands here instead of killing the process before workers are drained.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread.start()
    try:
        server.run()
    finally:
        stop.set()
        thread.join(timeout=10)
        controller.launcher.close()
        queue.close()
        storage.close()
    return 0


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
    try:
        controller.run(stop)
    finally:
        controller.launcher.close()
        queue.close()
        storage.close()
    return 0
