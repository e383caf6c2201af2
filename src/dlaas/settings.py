"""Settings: one typed object, read once from ``DLAAS_*`` variables and CLI flags.

Every field is a flag (``idle_timeout_s`` -> ``--idle-timeout-s``) and an environment
variable (``DLAAS_IDLE_TIMEOUT_S``). Flags win over the environment. The object is
built once at start-up and passed down; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dlaas.defaults import BATCH_SIZE, TARGET_BACKLOG_PER_WORKER
from dlaas.errors import ConfigError

COMMON = (
    "data_dir", "storage", "queue", "queue_name", "s3_endpoint_url", "s3_addressing_style",
    "sqs_endpoint_url", "aws_region", "log_level",
)  # fmt: skip
MODEL = (
    "model_dir", "model", "labels", "input_size", "resize_size", "mean", "std", "layout",
)  # fmt: skip
WORKER = (
    "batch_size", "max_batch_delay_ms", "idle_timeout_s", "visibility_timeout_s",
    "max_receives", "intra_op_threads", "worker_id", "parent_pid",
)  # fmt: skip
WEB = (
    "host", "port", "max_upload_mb", "max_pixels", "max_files_per_job", "max_backlog",
    "classify_timeout_s",
)  # fmt: skip
SCALING = (
    "workers", "min_workers", "max_workers", "target_backlog_per_worker", "upscale_delay_s",
    "downscale_delay_s", "max_message_age_s", "scale_interval_s", "launcher",
)  # fmt: skip

AWS = (
    "cluster_name", "asg_name", "ec2_launch_template", "ec2_image_id", "ec2_instance_type",
    "ec2_subnet_id", "ec2_security_group_ids", "ec2_instance_profile", "worker_package",
)  # fmt: skip

# What each command shows in --help, and what travels to a worker as DLAAS_* variables.
GROUPS = {
    "storage and queue": COMMON,
    "model": MODEL,
    "worker": WORKER,
    "web": WEB,
    "scaling": SCALING,
    "AWS launchers": AWS,
}


# The tuning a worker on another machine shares with the controller that starts it.
REMOTE_WORKER = (
    "queue_name", "batch_size", "max_batch_delay_ms", "idle_timeout_s", "visibility_timeout_s",
    "max_receives", "intra_op_threads",
)  # fmt: skip


STORAGE_SCHEMES = ("file", "memory", "s3")
QUEUE_SCHEMES = ("sqlite", "memory", "sqs", "https")


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Everything an operator can set. Descriptions double as ``--help`` text."""

    model_config = SettingsConfigDict(env_prefix="DLAAS_", extra="forbid", frozen=True)

    # Where things live.
    data_dir: Path = Field(
        Path(".dlaas"), description="directory for the embedded store, queue and model cache"
    )
    storage: str | None = Field(
        None,
        description="store URL: file:///path or s3://bucket/prefix (default <data-dir>/objects)",
    )
    queue: str | None = Field(
        None,
        description="sqlite:///path/queue.db or sqs://name (default <data-dir>/queue.db)",
    )
    queue_name: str = Field("dlaas-input", description="name of the input queue")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (SeaweedFS, MinIO); default: AWS"
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="S3 addressing style"
    )
    sqs_endpoint_url: str | None = Field(None, description="SQS-compatible endpoint; default: AWS")
    aws_region: str | None = Field(
        None, description="AWS region; default: the AWS SDK's own resolution"
    )

    # Web tier.
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    max_upload_mb: float = Field(20.0, gt=0, description="largest accepted image, in MB")
    max_pixels: int = Field(
        40_000_000, gt=0, description="largest accepted image, in pixels (read from the header)"
    )
    max_files_per_job: int = Field(10_000, gt=0, description="most images in one POST /v1/jobs")
    max_backlog: int = Field(
        100_000, ge=1, description="refuse uploads with 429 while this many messages wait"
    )
    classify_timeout_s: float = Field(
        30.0, gt=0, description="default wait of the synchronous endpoints"
    )

    # Workers.
    workers: int | None = Field(
        None, ge=0, description="fixed (non-elastic) mode: run exactly N local workers"
    )
    batch_size: int = Field(BATCH_SIZE, ge=1, le=256, description="most images per forward pass")
    max_batch_delay_ms: float = Field(
        10.0,
        ge=0,
        description="longest time to top a batch up while more messages are arriving",
    )
    idle_timeout_s: float = Field(
        30.0, gt=0, description="a worker exits after this long without messages"
    )
    visibility_timeout_s: float = Field(
        30.0, ge=1, description="how long a received message stays hidden; heartbeats extend it"
    )
    max_receives: int = Field(
        5, ge=1, description="deliveries before a message goes to the dead-letter queue"
    )
    intra_op_threads: int = Field(
        1, ge=1, description="ONNX Runtime threads per worker (one worker per core scales better)"
    )
    worker_id: str | None = Field(
        None, description="this worker's ID (set by launchers); default: host-pid"
    )
    parent_pid: int | None = Field(
        None,
        description="finish the batch in hand and exit once this process is gone"
        " (dlaas serve sets it for its local workers)",
    )

    # Model.
    model_dir: Path | None = Field(None, description="model cache (default <data-dir>/models)")
    model: Path | None = Field(
        None, description="bring your own ONNX classifier instead of EfficientNet-Lite0"
    )
    labels: Path | None = Field(None, description="labels file for --model, one class per line")
    input_size: int = Field(224, gt=0, description="--model preprocessing: crop size")
    resize_size: int = Field(
        256, gt=0, description="--model preprocessing: short side before the centre crop"
    )
    mean: str = Field(
        "127,127,127", description="--model preprocessing: per-channel mean on 0..255 pixels"
    )
    std: str = Field(
        "128,128,128", description="--model preprocessing: per-channel std on 0..255 pixels"
    )
    layout: Literal["NCHW", "NHWC"] = Field(
        "NCHW", description="--model preprocessing: input layout"
    )

    # Autoscaling.
    min_workers: int = Field(0, ge=0, description="elastic mode: fewest workers")
    max_workers: int = Field(
        default_factory=_cpu_count, ge=1, description="elastic mode: most workers"
    )
    target_backlog_per_worker: int = Field(
        TARGET_BACKLOG_PER_WORKER,
        ge=1,
        description="messages waiting or in a batch per worker before another one starts",
    )
    upscale_delay_s: float = Field(
        0.0, ge=0, description="a higher worker count must hold this long before scaling up"
    )
    downscale_delay_s: float = Field(
        15.0, ge=0, description="a lower worker count must hold this long before draining"
    )
    max_message_age_s: float | None = Field(
        None, gt=0, description="scale up when the oldest message is older than this"
    )
    scale_interval_s: float = Field(1.0, gt=0, description="controller period")
    launcher: Literal["local", "ec2", "asg"] = Field(
        "local", description="how the controller starts workers: local processes, EC2, or an ASG"
    )

    # AWS launchers (see docs/aws.md).
    cluster_name: str = Field("dlaas", description="ec2: value of the dlaas:cluster tag")
    asg_name: str | None = Field(None, description="asg: the Auto Scaling group of the workers")
    ec2_launch_template: str | None = Field(
        None, description="ec2: launch template name or ID (or give --ec2-image-id)"
    )
    ec2_image_id: str | None = Field(None, description="ec2: AMI of the worker instances")
    ec2_instance_type: str | None = Field(None, description="ec2: instance type, e.g. c7i.large")
    ec2_subnet_id: str | None = Field(None, description="ec2: subnet of the worker instances")
    ec2_security_group_ids: str | None = Field(
        None, description="ec2: comma-separated security group IDs"
    )
    ec2_instance_profile: str | None = Field(
        None, description="ec2: IAM instance profile name of the workers"
    )
    worker_package: str = Field(
        "dlaas[aws]", description="ec2: what the workers' user data pip-installs"
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("mean", "std")
    @classmethod
    def _three_floats(cls, value: str) -> str:
        parts = value.split(",")
        try:
            floats = [float(p) for p in parts]
        except ValueError:
            floats = []
        if len(floats) != 3:
            raise ValueError(
                f"expected three comma-separated numbers like 127,127,127, got {value!r}"
            )
        return value

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        return _check_scheme(value, STORAGE_SCHEMES, "storage")

    @field_validator("queue")
    @classmethod
    def _queue_url(cls, value: str | None) -> str | None:
        return _check_scheme(value, QUEUE_SCHEMES, "queue")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"--min-workers ({self.min_workers}) is above --max-workers ({self.max_workers})"
            )
        if (self.model is None) != (self.labels is None):
            raise ValueError("--model and --labels go together: give both or neither")
        if self.launcher == "asg" and not self.asg_name:
            raise ValueError("--launcher asg needs --asg-name (the workers' Auto Scaling group)")
        if self.launcher == "ec2" and not (self.ec2_launch_template or self.ec2_image_id):
            raise ValueError("--launcher ec2 needs --ec2-launch-template or --ec2-image-id")
        return self

    # Derived values: defaults that depend on other settings.
    @property
    def storage_url(self) -> str:
        return self.storage or f"file://{(self.data_dir / 'objects').resolve()}"

    @property
    def queue_url(self) -> str:
        return self.queue or f"sqlite://{(self.data_dir / 'queue.db').resolve()}"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def backlog_target(self) -> int:
        return self.target_backlog_per_worker

    def to_env(self, fields: Iterable[str]) -> dict[str, str]:
        """``fields`` as their ``DLAAS_*`` twins, unset ones left out: how settings travel to
        a worker process or instance, so that it reads exactly what this process read."""
        env = {}
        for name in fields:
            value = getattr(self, name)
            if value is not None:
                env[f"DLAAS_{name.upper()}"] = str(value)
        return env

    def storage_options(self) -> dict[str, Any]:
        if urlparse(self.storage_url).scheme != "s3":
            return {}
        return {
            "endpoint_url": self.s3_endpoint_url,
            "region": self.aws_region,
            "addressing_style": self.s3_addressing_style,
        }

    def queue_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"max_receives": self.max_receives}
        if urlparse(self.queue_url).scheme in ("sqs", "https"):
            options.update(endpoint_url=self.sqs_endpoint_url, region=self.aws_region)
        return options


def _check_scheme(value: str | None, schemes: tuple[str, ...], what: str) -> str | None:
    if value is None:
        return None
    scheme = urlparse(value).scheme
    if scheme not in schemes:
        accepted = ", ".join(f"{s}://" for s in schemes)
        raise ValueError(f"unknown {what} URL scheme in {value!r}; accepted: {accepted}")
    return value


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus explicit overrides (the CLI flags).

    Raises ConfigError with one line per problem, naming the flag and its variable.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            where = f"--{field.replace('_', '-')} / DLAAS_{field.upper()}: " if field else ""
            lines.append(f"{where}{err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None
