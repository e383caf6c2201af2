"""The worker instances' user data: a bash script that installs and runs ``dlaas worker``.

The script itself is ``worker-userdata.sh`` beside this module; rendering only fills in
quoted values, so what runs on the instance can be read (and ``bash -n``-checked) as is.
``dlaas aws user-data`` prints it for a launch template or the EC2 launcher.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from urllib.parse import urlparse

from dlaas.errors import ConfigError

TEMPLATE = "worker-userdata.sh"
MAX_USER_DATA_BYTES = 16 * 1024  # EC2's limit, before base64
DEFAULT_PACKAGE_SPEC = "dlaas[aws]"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
# Set by the script itself from the instance metadata, or fixed by the script.
_RESERVED = frozenset({"DLAAS_WORKER_ID", "DLAAS_DATA_DIR", "AWS_DEFAULT_REGION"})


def render_user_data(
    *,
    storage_url: str,
    queue_url: str,
    package_spec: str = DEFAULT_PACKAGE_SPEC,
    extra_env: Mapping[str, str] | None = None,
    s3_endpoint_url: str | None = None,
    sqs_endpoint_url: str | None = None,
    aws_region: str | None = None,
    pip_args: Sequence[str] = (),
    poweroff_on_exit: bool = True,
) -> str:
    """The bootstrap script for a worker instance on these URLs.

    ``package_spec`` is what ``pip install`` gets: ``dlaas[aws]``, a pinned version, a
    wheel URL, or ``dlaas[aws] @ s3-presigned-url``. ``pip_args`` go before it (e.g.
    ``--index-url`` of a private mirror). ``extra_env`` adds settings such as
    ``DLAAS_IDLE_TIMEOUT_S``; each ``DLAAS_*`` name must be a dlaas setting.
    ``poweroff_on_exit=False`` keeps instances after the worker exits (debugging).
    """
    _check_shared(storage_url, queue_url, package_spec)
    env: dict[str, str] = {
        "DLAAS_STORAGE": storage_url,
        "DLAAS_QUEUE": queue_url,
        "DLAAS_DATA_DIR": "/var/lib/dlaas",
    }
    optional = {
        "DLAAS_S3_ENDPOINT_URL": s3_endpoint_url,
        "DLAAS_SQS_ENDPOINT_URL": sqs_endpoint_url,
        "DLAAS_AWS_REGION": aws_region,
    }
    env.update({k: v for k, v in optional.items() if v})
    for name, value in (extra_env or {}).items():
        _check_extra(name)
        env[name] = value
    lines = [f"{name}={_env_value(name, value)}" for name, value in env.items()]
    values = {
        "PACKAGE_SPEC": shlex.quote(package_spec),
        "PIP_ARGS": " ".join(shlex.quote(arg) for arg in pip_args),
        "POWEROFF_ON_EXIT": "yes" if poweroff_on_exit else "no",
        "ENV_LINES": "\n".join(lines),
    }
    script = _PLACEHOLDER.sub(lambda m: values[m.group(1)], _template())
    size = len(script.encode())
    if size > MAX_USER_DATA_BYTES:
        raise ConfigError(
            f"the user data is {size} bytes; EC2 accepts at most {MAX_USER_DATA_BYTES}: "
            "pass fewer or shorter --env values"
        )
    return script


def _check_shared(storage_url: str, queue_url: str, package_spec: str) -> None:
    """Workers on other machines reach the service only through S3 and SQS."""
    if urlparse(storage_url).scheme != "s3":
        raise ConfigError(
            f"workers on other machines need shared storage: --storage must be s3://bucket/prefix, "
            f"not {storage_url!r}"
        )
    if urlparse(queue_url).scheme not in ("sqs", "https"):
        raise ConfigError(
            f"workers on other machines need a shared queue: --queue must be sqs://NAME or an "
            f"SQS queue URL, not {queue_url!r}"
        )
    if not package_spec.strip():
        raise ConfigError("the package to install (--package) is empty")


def _template() -> str:
    return resources.files("dlaas.aws").joinpath(TEMPLATE).read_text(encoding="utf-8")


def _check_extra(name: str) -> None:
    if not _ENV_NAME.match(name):
        raise ConfigError(f"environment variable name {name!r} is invalid; use A-Z, 0-9 and _")
    if name in _RESERVED:
        raise ConfigError(f"{name} is set by the user-data script itself; leave it out")
    if name.startswith("DLAAS_"):
        from dlaas.settings import Settings

        field = name.removeprefix("DLAAS_").lower()
        if field not in Settings.model_fields:
            raise ConfigError(
                f"{name} is not a dlaas setting; see `dlaas worker --help` for the settings"
            )


def _env_value(name: str, value: str) -> str:
    """Single-quoted: read the same by systemd's EnvironmentFile and by bash."""
    if any(c in value for c in "'\\\n\r\x00"):
        raise ConfigError(
            f"the value of {name} contains a quote, backslash or line break, "
            "which the worker's environment file cannot hold"
        )
    return f"'{value}'"


# The CLI: `dlaas aws user-data` --------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlaas aws user-data",
        description="Print the user-data script that bootstraps a dlaas worker instance.",
    )
    env = os.environ.get
    parser.add_argument(
        "--storage",
        default=env("DLAAS_STORAGE"),
        help="s3://bucket/prefix shared with the web tier (env DLAAS_STORAGE)",
    )
    parser.add_argument(
        "--queue",
        default=env("DLAAS_QUEUE"),
        help="sqs://NAME or queue URL of the input queue (env DLAAS_QUEUE)",
    )
    parser.add_argument("--s3-endpoint-url", default=env("DLAAS_S3_ENDPOINT_URL"))
    parser.add_argument("--sqs-endpoint-url", default=env("DLAAS_SQS_ENDPOINT_URL"))
    parser.add_argument(
        "--aws-region", default=env("DLAAS_AWS_REGION"), help="default: the instance's region"
    )
    parser.add_argument(
        "--package",
        default=DEFAULT_PACKAGE_SPEC,
        help="what pip installs on the instance: a name, pinned version or wheel URL "
        f"(default {DEFAULT_PACKAGE_SPEC})",
    )
    parser.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for pip install, e.g. --pip-arg=--index-url=URL (repeatable)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another worker setting, e.g. DLAAS_IDLE_TIMEOUT_S=120 (repeatable)",
    )
    parser.add_argument(
        "--keep-instance",
        action="store_true",
        help="do not power the instance off when the worker exits (debugging)",
    )
    parser.add_argument(
        "--base64", action="store_true", help="print base64, as launch templates take it"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.storage or not args.queue:
            raise ConfigError("give --storage s3://... and --queue sqs://... (or DLAAS_*)")
        extra: dict[str, str] = {}
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--env {item!r} is not NAME=VALUE")
            extra[name] = value
        script = render_user_data(
            storage_url=args.storage,
            queue_url=args.queue,
            package_spec=args.package,
            extra_env=extra,
            s3_endpoint_url=args.s3_endpoint_url,
            sqs_endpoint_url=args.sqs_endpoint_url,
            aws_region=args.aws_region,
            pip_args=args.pip_arg,
            poweroff_on_exit=not args.keep_instance,
        )
    except ConfigError as exc:
        print(f"dlaas: error: {exc}", file=sys.stderr)
        return 2
    if args.base64:
        print(base64.b64encode(script.encode()).decode())
    else:
        sys.stdout.write(script)
    return 0
