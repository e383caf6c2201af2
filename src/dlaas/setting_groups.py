"""Which settings go together: the CLI's flag groups, and what travels to a worker.

Kept apart from ``Settings`` so that the field list and the grouping stay readable.
"""

from __future__ import annotations

COMMON = (
    "data_dir", "storage", "queue", "queue_name", "s3_endpoint_url", "s3_addressing_style",
    "sqs_endpoint_url", "aws_region", "log_level",
)  # fmt: skip
MODEL = (
    "model_dir", "model", "labels", "calibration_dir", "input_size", "resize_size", "mean",
    "std", "layout",
)  # fmt: skip
WORKER = (
    "batch_size", "run_batch_size", "max_batch_delay_ms", "idle_timeout_s", "visibility_timeout_s",
    "max_receives", "intra_op_threads", "worker_id", "parent_pid", "keep_inputs",
)  # fmt: skip
WEB = (
    "host", "port", "max_upload_mb", "max_pixels", "max_files_per_job", "max_backlog",
    "classify_timeout_s", "reply_queue_stale_s", "source_allow",
    "source_page_keys",
)  # fmt: skip
SCALING = (
    "workers", "min_workers", "max_workers", "target_backlog_per_worker", "upscale_delay_s",
    "downscale_delay_s", "max_message_age_s", "scale_interval_s", "launcher",
)  # fmt: skip

SECURITY = (
    "api_keys_file", "allow_anonymous", "rate_limit_per_owner", "rate_limit_burst",
    "max_backlog_per_owner", "cors_origins", "limits_url",
)  # fmt: skip

AWS = (
    "cluster_name", "asg_name", "ec2_launch_template", "ec2_image_id", "ec2_instance_type",
    "ec2_subnet_id", "ec2_security_group_ids", "ec2_instance_profile", "worker_package",
)  # fmt: skip

LIFECYCLE = (
    "retention_h", "janitor_interval_s", "webhook_allow_hosts", "webhook_secret",
    "webhook_max_attempts", "webhook_backoff_s",
)  # fmt: skip

# What each command shows in --help, and what travels to a worker as DLAAS_* variables.
GROUPS = {
    "storage and queue": COMMON,
    "model": MODEL,
    "worker": WORKER,
    "web": WEB,
    "security": SECURITY,
    "scaling": SCALING,
    "job lifecycle": LIFECYCLE,
    "AWS launchers": AWS,
}


# The tuning a worker on another machine shares with the controller that starts it.
REMOTE_WORKER = (
    "queue_name", "batch_size", "run_batch_size", "max_batch_delay_ms", "idle_timeout_s",
    "visibility_timeout_s", "max_receives", "intra_op_threads", "keep_inputs",
)  # fmt: skip

# --model names that dlaas builds itself (dlaas.model.builtin and dlaas.model.quantize; a
# test keeps the lists in step); any other value is the path of the user's own ONNX file.
BUILTIN_MODELS = (
    "efficientnet-lite0", "efficientnet-lite0-int8", "efficientnet-lite1", "efficientnet-lite2",
)  # fmt: skip

RGB = tuple[float, float, float]

STORAGE_SCHEMES = ("file", "memory", "s3")
QUEUE_SCHEMES = ("sqlite", "memory", "sqs", "https", "redis", "rediss")
LIMITS_SCHEMES = ("redis", "rediss")
URL_SCHEMES = {"storage": STORAGE_SCHEMES, "queue": QUEUE_SCHEMES, "limits_url": LIMITS_SCHEMES}
