"""SQS as this backend calls it: its limits, its message format, and the one place
where boto's errors become dlaas errors (``call``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from dlaas.aws.clients import describe_error, error_code
from dlaas.errors import ConfigError, DlaasError, QueueError
from dlaas.queue.base import Message

MAX_WAIT_S = 20  # SQS's longest long poll
MAX_BATCH = 10  # SQS's most messages per receive, send or delete call
MAX_BATCH_BYTES = 256 * 1024  # SQS's limit on one send batch's total payload
MAX_VISIBILITY_S = 12 * 60 * 60
ATTRIBUTES = ["SentTimestamp", "ApproximateReceiveCount"]
PURGE_IN_PROGRESS = "AWS.SimpleQueueService.PurgeQueueInProgress"
_MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
STALE_RECEIPT = (
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
)
# Families of codes, as ``call`` names them; ANY tolerates every error.
MISSING, STALE, ANY = "missing", "stale", "*"


def call(
    queue: str,
    action: str,
    method: Callable[..., Any],
    *,
    allow: Collection[str] = (),
    fail: Callable[[str], DlaasError] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Call boto for ``queue``; the one place where its errors become dlaas errors.

    An error whose code (or family: MISSING, STALE) is in ``allow`` comes back as
    ``{"Error": {"Code": code}}``, the shape of boto's own error response. Any other
    raises ``fail(description)`` when given, else QueueError.
    """
    try:
        response: dict[str, Any] = method(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        code = _code(exc)
        if code in allow or ANY in allow:
            return {"Error": {"Code": code}}
        if fail is not None:
            error = fail(describe_error(exc))
            raise error from (None if isinstance(error, ConfigError) else exc)
        if code == MISSING:
            raise QueueError(
                f"SQS queue {queue!r} no longer exists (while trying to {action})"
            ) from exc
        raise QueueError(f"SQS {action} on queue {queue!r} failed: {describe_error(exc)}") from exc
    return response


def _code(exc: BaseException) -> str:
    """The error's code, with the missing-queue and stale-receipt codes by family."""
    code = error_code(exc)
    if code in _MISSING_QUEUE:
        return MISSING
    if code in STALE_RECEIPT:
        return STALE
    if code == "InvalidParameterValue" and isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", "")).lower()
        if "receipt" in message:
            return STALE
    return code


def parse_url(
    url: str, name: str | None, endpoint_url: str | None, region: str | None
) -> tuple[str, str | None, str | None, str | None]:
    """``sqs://NAME`` or an https queue URL -> (name, queue URL, endpoint URL, region).

    The name in the URL wins over ``name``. With an https queue URL the region and,
    outside AWS, the endpoint come from the URL unless given.
    """
    parsed = urlparse(url)
    if parsed.query or parsed.fragment or parsed.params:
        raise ConfigError(
            f"queue URL {url!r} has a query or fragment; sqs:// takes none. "
            "Use --sqs-endpoint-url and --aws-region instead"
        )
    if parsed.scheme == "sqs":
        queue_name = (parsed.netloc + parsed.path).strip("/") or name
        if not queue_name:
            raise ConfigError(f"queue URL {url!r} names no queue; use sqs://QUEUE-NAME")
        return queue_name, None, endpoint_url, region
    if parsed.scheme == "https":
        parts = parsed.path.strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"queue URL {url!r} is not an SQS queue URL like "
                "https://sqs.REGION.amazonaws.com/ACCOUNT/NAME"
            )
        host = parsed.hostname or ""
        if region is None and host.startswith("sqs.") and host.endswith(".amazonaws.com"):
            region = host.split(".")[1]
        if endpoint_url is None and not host.endswith(".amazonaws.com"):
            endpoint_url = f"{parsed.scheme}://{parsed.netloc}"
        return parts[1], url, endpoint_url, region
    raise ConfigError(f"queue URL {url!r} is not sqs://NAME or an https SQS queue URL")


def to_message(raw: dict[str, Any]) -> Message:
    attributes = raw.get("Attributes", {})
    return Message(
        id=str(raw["MessageId"]),
        body=str(raw["Body"]),
        receipt=str(raw["ReceiptHandle"]),
        receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        sent_at=int(attributes.get("SentTimestamp", time.time() * 1000)) / 1000.0,
    )


def whole_seconds(seconds: float) -> int:
    """SQS takes whole seconds: round up, so a lease is never shorter than asked."""
    return min(MAX_VISIBILITY_S, math.ceil(seconds))


def chunks(bodies: list[str]) -> list[list[str]]:
    """Send batches within SQS's limits: at most 10 messages and 256 KB each."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for body in bodies:
        length = len(body.encode())
        if current and (len(current) == MAX_BATCH or size + length > MAX_BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(body)
        size += length
    if current:
        out.append(current)
    return out
