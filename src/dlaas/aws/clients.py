"""Shared AWS plumbing: one way to build boto3 clients, and reading botocore errors.

Every dlaas client uses botocore's "standard" retry mode and leaves ``endpoint_url``
unset unless the operator gave one, so the SDK's own ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_<SERVICE>`` variables keep working. boto3 is imported here, at
module import, so importing any AWS backend without ``dlaas[aws]`` fails with a
``ModuleNotFoundError`` naming boto3 or botocore, which the openers turn into advice.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from dlaas.errors import ConfigError

__all__ = ["ClientError", "describe_error", "error_code", "make_client"]

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # above SQS's longest poll (20 s) with room for a slow answer


def make_client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    max_pool_connections: int = 10,
    s3_addressing_style: str | None = None,
) -> Any:
    """A boto3 client with standard retries; ``None`` settings fall back to the SDK's own.

    Raises ConfigError when no region can be found for a regional service.
    """
    options: dict[str, Any] = {
        "retries": {"mode": "standard"},
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "max_pool_connections": max_pool_connections,
    }
    if s3_addressing_style is not None:
        options["s3"] = {"addressing_style": s3_addressing_style}
    try:
        # A session of our own: the default session is shared and not thread-safe to build.
        session = boto3.session.Session()
        return session.client(
            service,
            region_name=region or None,
            endpoint_url=endpoint_url or None,
            config=Config(**options),
        )
    except NoRegionError:
        raise ConfigError(
            f"no AWS region for {service}: pass --aws-region (DLAAS_AWS_REGION) "
            "or set AWS_REGION / AWS_DEFAULT_REGION"
        ) from None
    except (BotoCoreError, ValueError) as exc:
        raise ConfigError(f"cannot set up the AWS {service} client: {exc}") from exc


def error_code(exc: BaseException) -> str:
    """The service's error code (``NoSuchKey``, ``AccessDenied``...), or ``""``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def describe_error(exc: BaseException) -> str:
    """One line for a user: what failed and, for the usual causes, what to do."""
    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials found; attach an IAM role (instance profile) or set "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    code = error_code(exc)
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"):
        return f"access denied ({exc}); check the IAM policy of this machine's role"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId"):
        return f"the AWS credentials were refused ({exc}); check the access key and secret"
    return str(exc)
