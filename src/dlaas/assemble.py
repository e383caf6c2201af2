"""Builds dlaas from one ``Settings``: backends, model, policy, launcher, controller, worker.

Every process starts here: ``dlaas serve`` and ``dlaas controller`` (via ``dlaas.serve``),
``dlaas worker``, and the local fork server's children. Nothing else turns settings into
objects, so a new backend or tier is wired in once. It sits above the tiers it wires and
below the commands that run them (docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from dlaas.errors import ConfigError, DlaasError
from dlaas.jobs.messages import Progress, Reply
from dlaas.logs import configure_logging
from dlaas.model.select import default_model_name, model_spec_from
from dlaas.setting_groups import COMMON, MODEL, REMOTE_WORKER, URL_SCHEMES, WORKER
from dlaas.settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from fastapi import FastAPI

    from dlaas.aws.protection import ScaleInProtection
    from dlaas.jobs.store import JobStore
    from dlaas.lifecycle.webhooks import WebhookDispatcher
    from dlaas.queue.base import Queue
    from dlaas.scaling.controller import Controller
    from dlaas.scaling.launchers.base import Launcher
    from dlaas.scaling.pools import ModelPools
    from dlaas.storage.base import Storage
    from dlaas.web.metrics import Metrics
    from dlaas.web.replies import ReplyHub
    from dlaas.web.security.tenancy import Limits, OwnerBacklog
    from dlaas.worker import Worker

__all__ = [
    "build_app",
    "build_controller",
    "build_launcher",
    "build_pools",
    "build_worker",
    "model_spec_from",
    "open_limits_from",
    "open_queue_from",
    "open_storage_from",
    "run_worker",
    "worker_env",
    "worker_main",
]

log = logging.getLogger("dlaas.worker")

FIXED_MODE_IDLE_TIMEOUT_S = 10**9  # fixed-mode workers never leave on their own


def open_storage_from(settings: Settings) -> Storage:
    from dlaas.storage import open_storage

    return open_storage(settings.storage_url, **settings.store_options(settings.storage_url))


def open_queue_from(settings: Settings) -> Queue:
    from dlaas.queue import open_queue

    return open_queue(settings.queue_url, name=settings.queue_name, **settings.queue_options())


def build_app(
    settings: Settings,
    storage: Storage,
    queue: Queue,
    *,
    stats_provider: Callable[[], dict[str, Any]] | None = None,
    on_enqueued: Callable[[str | None], None] | None = None,
    workers_readiness: Callable[[], str] | None = None,
    limits: Limits | None = None,
    queue_for: Callable[[str | None], Queue] | None = None,
) -> FastAPI:
    """The web app around open backends, every part built here once. From the controller:
    ``stats_provider``, ``on_enqueued`` (its ``wake``: an idle service starts workers as a
    job arrives), ``workers_readiness`` (``/readyz`` waits for it) and ``queue_for`` (each
    model's queue); ``limits`` shared with other replicas, else kept in this process."""
    from dlaas.jobs.idempotency import IdempotencyStore
    from dlaas.jobs.store import JobStore
    from dlaas.lifecycle.webhooks import build_dispatcher, webhooks_allowed
    from dlaas.web import WebContext, create_app
    from dlaas.web.ingest import Ingest
    from dlaas.web.metrics import Metrics
    from dlaas.web.security import open_keyring
    from dlaas.web.source_jobs import build_source_jobs
    from dlaas.web.uploads import BacklogGate, UploadReader
    from dlaas.web.v2.model import model_index_from

    jobs = JobStore(storage, queue)
    metrics = Metrics()
    limits = limits or _in_process_limits(settings)
    owners, dispatcher = limits.backlog, build_dispatcher(settings, jobs)
    hub = _reply_hub(settings, jobs, metrics, owners, dispatcher)
    accepted = metrics.accepted_hook(on_enqueued)
    roots, source_jobs = build_source_jobs(settings, jobs, hub.name, accepted, queue_for)
    ingest = Ingest(
        jobs,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        on_accepted=accepted,
        owner_backlog=owners,
        route=queue_for,
    )
    ctx = WebContext(
        settings=settings,
        jobs=jobs,
        ingest=ingest,
        hub=hub,
        metrics=metrics,
        uploads=UploadReader(settings, BacklogGate(queue, settings.max_backlog), owners),
        idempotency=IdempotencyStore(jobs),
        models=model_index_from(settings),
        keys=open_keyring(settings),
        limiter=limits.rate,
        allow_hosts=webhooks_allowed(settings),
        dispatcher=dispatcher,
        stats_provider=stats_provider,
        workers_readiness=workers_readiness,
        source_roots=roots,
        source_jobs=source_jobs,
    )
    return create_app(ctx)


def _reply_hub(
    settings: Settings,
    jobs: JobStore,
    metrics: Metrics,
    owners: OwnerBacklog,
    dispatcher: WebhookDispatcher | None,
) -> ReplyHub:
    """This web process's reply queue. Every reply to it updates metrics, the owner's
    backlog, and the job's webhook, which may be due now; a final reply salvaged from a
    dead replica's queue releases its owner's backlog too."""
    from dlaas.web.replies import ReplyHub

    stale_s = settings.reply_queue_stale_s
    hub = ReplyHub(jobs, refresh_s=stale_s / 3, stale_after_s=stale_s)

    def on_reply(reply: Reply) -> None:
        metrics.observe_reply(reply)
        owners.observe_reply(reply)
        if dispatcher is not None and not isinstance(reply, Progress):
            dispatcher.wake(reply.job_id)

    hub.on_reply = on_reply
    hub.on_salvaged = owners.observe_reply
    return hub


def _in_process_limits(settings: Settings) -> Limits:
    from dlaas.web.security.tenancy import Limits

    return Limits.in_process(
        settings.rate_limit_per_owner, settings.rate_limit_burst, settings.max_backlog_per_owner
    )


def open_limits_from(settings: Settings) -> Limits:
    """The owner limits: in Redis when the replicas share one (``--limits-url``, or the
    ``redis://`` queue's server), so N replicas enforce one limit; else in this process."""
    url = settings.limits_url
    if url is None and urlparse(settings.queue_url).scheme in URL_SCHEMES["limits_url"]:
        url = settings.queue_url  # the replicas share this Redis already
    if url is None:
        return _in_process_limits(settings)
    try:
        from dlaas.web.security.shared_limits import open_shared_limits
    except ModuleNotFoundError as exc:
        if exc.name != "redis":
            raise
        raise ConfigError(
            f"limits URL {url!r} needs the redis client, which is not installed; "
            "install dlaas[redis] (pip install 'dlaas[redis]')"
        ) from exc
    return open_shared_limits(
        url,
        namespace=settings.queue_name,
        rate_per_s=settings.rate_limit_per_owner,
        burst=settings.rate_limit_burst,
        max_backlog=settings.max_backlog_per_owner,
    )


def build_controller(settings: Settings, queue: Queue, storage: Storage) -> Controller:
    """The controller and its launcher; fixed mode is the same loop with min = max = N."""
    from dlaas.scaling.controller import Controller
    from dlaas.scaling.policy import PolicyConfig

    launcher = build_launcher(settings, storage, fixed=settings.workers is not None)
    config = PolicyConfig.from_settings(settings)
    return Controller(queue, launcher, config, interval_s=settings.scale_interval_s)


def build_pools(settings: Settings, queue: Queue, storage: Storage) -> ModelPools:
    """A pool per model (``dlaas.scaling.pools``) when this process starts the workers
    (the local launcher); else the one pool of ``build_controller`` for every model."""
    from dlaas.scaling.controller import Controller
    from dlaas.scaling.policy import PolicyConfig
    from dlaas.scaling.pools import ModelPools

    default = default_model_name(settings)
    per_model = settings.launcher == "local" and settings.workers != 0
    per_model = per_model and settings.model_path is None

    def make(model: str) -> Controller:
        if model == default:
            return build_controller(settings, queue, storage)
        name = f"{settings.queue_name}-{model}"
        own = settings.model_copy(
            update={
                "model": model,
                "queue_name": name,
                "workers": None,
                "min_workers": 0,
                "max_workers": settings.workers or settings.max_workers,
            }
        )
        launcher = build_launcher(own, storage, fixed=False)
        config = PolicyConfig.from_settings(own)
        return Controller(open_queue_from(own), launcher, config, interval_s=own.scale_interval_s)

    return ModelPools(default, make, shared=not per_model)


def build_launcher(settings: Settings, storage: Storage, *, fixed: bool) -> Launcher:
    if settings.launcher == "local":
        from dlaas.scaling.launchers.local import LocalLauncher, health_probe

        # --workers 0 is the web tier alone (KEDA or other hosts run the workers): no fork
        # server holding a model that no worker will ever be forked from.
        web_only = fixed and settings.workers == 0
        return LocalLauncher(
            ["dlaas", "worker"] if web_only else (),
            env=worker_env(settings, fixed=fixed),
            probe=health_probe(storage),
            fork_entry=None if web_only else worker_main,
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

    user_data = render_user_data(
        storage_url=settings.storage_url,
        queue_url=settings.queue_url,
        package_spec=settings.worker_package,
        s3_endpoint_url=settings.s3_endpoint_url,
        sqs_endpoint_url=settings.sqs_endpoint_url,
        aws_region=settings.aws_region,
        extra_env=settings.to_env(REMOTE_WORKER),
    )
    return Ec2Launcher(
        cluster=settings.cluster_name,
        storage=storage,
        user_data=user_data,
        image_id=settings.ec2_image_id,
        launch_template=settings.ec2_launch_template,
        instance_type=settings.ec2_instance_type,
        subnet_id=settings.ec2_subnet_id,
        security_group_ids=settings.ec2_security_group_ids,
        instance_profile=settings.ec2_instance_profile,
        region=settings.aws_region,
    )


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
    if settings.model_path is not None and settings.labels is not None:
        env["DLAAS_MODEL"] = os.path.realpath(settings.model_path)
        env["DLAAS_LABELS"] = str(settings.labels.resolve())
    if fixed:
        env["DLAAS_IDLE_TIMEOUT_S"] = str(FIXED_MODE_IDLE_TIMEOUT_S)
    return env


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_worker(settings: Settings) -> tuple[Worker, ScaleInProtection | None]:
    """A worker with its model loaded once (or taken from the fork server's preload)."""
    from dlaas.model import Classifier
    from dlaas.storage import open_source
    from dlaas.worker import Worker, WorkerOptions
    from dlaas.worker.preload import classifier_for
    from dlaas.worker.shelf import repository_shelf
    from dlaas.worker.sources import Sources

    worker_id = settings.worker_id or default_worker_id()
    t0 = time.monotonic()
    spec = model_spec_from(settings)
    preloaded = classifier_for(spec.onnx_path, settings.intra_op_threads)
    classifier = preloaded
    if classifier is None:
        classifier = Classifier(spec, intra_op_num_threads=settings.intra_op_threads)
        classifier.set_run_batch_size(settings.run_batch_size, settings.batch_size)
    log.info(
        "model_loaded",
        extra={
            "worker_id": worker_id,
            "model": spec.name,
            "preloaded": preloaded is not None,
            "run_batch_size": classifier.run_batch_size,
            "ms": round((time.monotonic() - t0) * 1000),
        },
    )
    protection = _scale_in_protection(worker_id, settings)
    worker = Worker(
        storage=open_storage_from(settings),
        queue=open_queue_from(settings),
        classifier=classifier,
        worker_id=worker_id,
        options=WorkerOptions.from_settings(settings),
        on_busy=protection.set if protection is not None else None,
        shelf=repository_shelf(settings, spec, classifier),
        sources=Sources(lambda url: open_source(url, **settings.store_options(url))),
    )
    return worker, protection


def run_worker(settings: Settings) -> int:
    """``dlaas worker``: JSON logs, then one worker until it exits; its exit code."""
    configure_logging(settings.log_level)
    worker, protection = build_worker(settings)
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        if protection is not None:
            protection.close()
        worker.sources.close()
        worker.queue.close()
        worker.storage.close()


def worker_main() -> int:
    """A worker configured by its ``DLAAS_*`` environment alone (a forked child), with
    the CLI's exit codes for errors."""
    try:
        return run_worker(load_settings())
    except DlaasError as exc:
        print(f"dlaas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _scale_in_protection(worker_id: str, settings: Settings) -> ScaleInProtection | None:
    """In an Auto Scaling group, protect this instance while it holds messages.

    Only EC2 worker IDs (``i-...``) can be protected; elsewhere this is None and the
    worker never imports boto3.
    """
    if not worker_id.startswith("i-"):
        return None
    from dlaas.aws.protection import ScaleInProtection

    return ScaleInProtection.for_worker(worker_id, region=settings.aws_region)
