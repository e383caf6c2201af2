"""Settings: one typed object, read once from ``DLAAS_*`` variables and CLI flags.

Every field is a flag (``idle_timeout_s`` -> ``--idle-timeout-s``) and an environment
variable (``DLAAS_IDLE_TIMEOUT_S``). Flags win over the environment. The object is
built once at start-up and passed down; nothing else reads ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import pydantic
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dlaas.defaults import (
    BATCH_SIZE,
    MAX_RECEIVES,
    QUEUE_NAME,
    TARGET_BACKLOG_PER_WORKER,
    cpu_count,
)
from dlaas.errors import ConfigError
from dlaas.setting_groups import BUILTIN_MODELS, RGB, URL_SCHEMES


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
        description="sqlite:///path/queue.db, sqs://name or redis://host:6379/0?stream=name"
        " (default <data-dir>/queue.db)",
    )
    queue_name: str = Field(QUEUE_NAME, description="name of the input queue")
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
    source_allow: str = Field("", description="folders jobs over stored images may read and"
        " write: s3://bucket/prefix/,file:///data/ or owner=URL; empty turns them off")  # fmt: skip
    source_page_keys: int = Field(1000, ge=1, le=10_000, description="keys per listing page")
    reply_queue_stale_s: float = Field(90.0, gt=0, description="a replica silent this long is"
        " dead: another clears its replies")  # fmt: skip

    # Security and tenancy (docs/security.md).
    api_keys_file: Path | None = Field(
        None,
        description="file of API keys (OWNER ROLE SHA256 per line; dlaas keys add writes it);"
        " without it every request is the owner 'anonymous'",
    )
    allow_anonymous: bool = Field(
        False, description="accept a non-loopback --host without --api-keys-file (at your risk)"
    )
    rate_limit_per_owner: float | None = Field(
        None, gt=0, description="requests per second each owner may make, e.g. 20 or 20/s"
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, description="requests an owner may make at once (default: 2 s of the rate)"
    )
    max_backlog_per_owner: int | None = Field(
        None,
        ge=1,
        description="refuse an owner's uploads with 429 while this many of its"
        " images wait or are being classified",
    )
    cors_origins: str | None = Field(
        None,
        description="comma-separated origins allowed to call the API from a browser"
        " (default: none, CORS off)",
    )
    limits_url: str | None = Field(
        None,
        description="redis:// URL where all web replicas keep the owner limits (default:"
        " the redis:// queue's server; else per process)",
    )
    # Workers.
    workers: int | None = Field(
        None, ge=0, description="fixed (non-elastic) mode: run exactly N local workers"
    )
    batch_size: int = Field(BATCH_SIZE, ge=1, le=256, description="most messages per batch")
    run_batch_size: int = Field(
        0,
        ge=0,
        le=256,
        description="images per forward pass within a batch; 0: time 1 against --batch-size "
        "when the model loads and keep the cheaper per image",
    )
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
        MAX_RECEIVES, ge=1, description="deliveries before a message goes to the dead-letter queue"
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
    model_dir: Path | None = Field(
        None,
        description="model repository: every model in it is served (default <data-dir>/models)",
    )
    model: str | None = Field(
        None,
        description="the default model: efficientnet-lite0 (the default), -lite0-int8, -lite1,"
        " -lite2, a model of --model-dir, or the path of your own ONNX file (with --labels)",
    )
    labels: Path | None = Field(
        None, description="labels file for your own --model file, one class per line"
    )
    calibration_dir: Path | None = Field(
        None,
        description="efficientnet-lite0-int8: photos to calibrate on when it is built"
        " (default: the seven public-domain photos dlaas ships)",
    )
    input_size: int = Field(224, gt=0, description="--model preprocessing: crop size")
    resize_size: int = Field(
        256, gt=0, description="--model preprocessing: short side before the centre crop"
    )
    # Lists are written comma-separated on the command line and in DLAAS_*, parsed once here.
    mean: Annotated[RGB, NoDecode] = Field(
        (127.0, 127.0, 127.0),
        description="--model preprocessing: per-channel mean on 0..255 pixels, like 127,127,127",
    )
    std: Annotated[RGB, NoDecode] = Field(
        (128.0, 128.0, 128.0),
        description="--model preprocessing: per-channel std on 0..255 pixels, like 128,128,128",
    )
    layout: Literal["NCHW", "NHWC"] = Field(
        "NCHW", description="--model preprocessing: input layout"
    )

    # Autoscaling.
    min_workers: int = Field(0, ge=0, description="elastic mode: fewest workers")
    max_workers: int = Field(
        default_factory=cpu_count, ge=1, description="elastic mode: most workers"
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
    ec2_security_group_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="ec2: comma-separated security group IDs"
    )
    ec2_instance_profile: str | None = Field(
        None, description="ec2: IAM instance profile name of the workers"
    )
    worker_package: str = Field(
        "dlaas[aws]", description="ec2: what the workers' user data pip-installs"
    )

    # Job lifecycle (docs/api.md): retention, and completion webhooks.
    keep_inputs: bool = Field(
        False, description="keep each uploaded image after its result is written"
    )
    retention_h: float = Field(
        168.0,
        ge=0,
        description="remove jobs (inputs, results, manifest) older than this; 0 keeps all",
    )
    janitor_interval_s: float = Field(
        300.0, gt=0, description="how often the retention janitor sweeps the store"
    )
    webhook_allow_hosts: str = Field(
        "",
        description="comma-separated hosts completion webhooks may go to (*.example.com, or *"
        " for any public host); empty turns callback_url off",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key that signs each completion webhook"
    )
    webhook_max_attempts: int = Field(
        8, ge=1, description="deliveries of one webhook before it is given up"
    )
    webhook_backoff_s: float = Field(
        2.0, gt=0, description="wait before the first webhook retry; doubles after each"
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _three_floats(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            floats = [float(p) for p in value.split(",")]
        except ValueError:
            floats = []
        if len(floats) != 3:
            raise ValueError(
                f"expected three comma-separated numbers like 127,127,127, got {value!r}"
            )
        return tuple(floats)

    @field_validator("ec2_security_group_ids", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return [] if value is None else value

    @field_validator("rate_limit_per_owner", mode="before")
    @classmethod
    def _per_second(cls, value: object) -> object:
        return value.strip().removesuffix("/s") if isinstance(value, str) else value

    @field_validator("storage", "queue", "limits_url")
    @classmethod
    def _url_scheme(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        field = str(info.field_name)
        return _check_scheme(value, URL_SCHEMES[field], field.removesuffix("_url"))

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"--min-workers ({self.min_workers}) is above --max-workers ({self.max_workers})"
            )
        if self.model_path is not None and self.labels is None:
            raise ValueError(
                f"--model and --labels go together: {self.model} needs its labels file (or"
                f" name a built-in model: {', '.join(BUILTIN_MODELS)})"
            )
        if self.labels is not None and self.model_path is None:
            raise ValueError(
                "--model and --labels go together: --labels needs --model FILE"
                if self.model is None
                else f"--labels is for your own --model file; {self.model} brings its own labels"
            )
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
    def model_path(self) -> Path | None:
        """The user's own ONNX file; None for a built-in model or a repository folder."""
        name = self.model or BUILTIN_MODELS[0]
        folder = "/" not in name and (self.model_cache_dir / name / "config.json").is_file()
        return None if name in BUILTIN_MODELS or folder else Path(name)

    @property
    def builtin_model(self) -> str | None:
        """The built-in model to serve (EfficientNet-Lite0 unless --model names another)."""
        if self.model_path is not None:
            return None
        return self.model or BUILTIN_MODELS[0]

    @property
    def model_cache_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_env(self, fields: Iterable[str]) -> dict[str, str]:
        """``fields`` as their ``DLAAS_*`` twins, unset ones left out: how settings travel to
        a worker process or instance, so that it reads exactly what this process read."""
        env = {}
        for name in fields:
            value = getattr(self, name)
            if isinstance(value, tuple | list):
                if value:
                    env[f"DLAAS_{name.upper()}"] = ",".join(
                        f"{v:g}" if isinstance(v, float) else str(v) for v in value
                    )
            elif value is not None:
                env[f"DLAAS_{name.upper()}"] = str(value)
        return env

    def store_options(self, url: str) -> dict[str, Any]:
        """How to open the store at ``url``; on S3 the operator's endpoint, never a request's."""
        if urlparse(url).scheme != "s3":
            return {}
        s3 = {"endpoint_url": self.s3_endpoint_url, "region": self.aws_region}
        return {**s3, "addressing_style": self.s3_addressing_style}

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
