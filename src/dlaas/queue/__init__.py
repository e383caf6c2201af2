"""Message queues with SQS semantics, chosen by URL: ``memory://``, ``sqlite://``, ``sqs://``,
``redis://``."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from dlaas.defaults import QUEUE_NAME
from dlaas.errors import ConfigError, QueueError
from dlaas.queue.base import (
    DEFAULT_MAX_RECEIVES,
    Message,
    Queue,
    QueueStats,
    check_max_receives,
    check_receive_args,
    check_visibility,
    validate_queue_name,
)

__all__ = [
    "ACCEPTED_SCHEMES",
    "DEFAULT_QUEUE_NAME",
    "Message",
    "Queue",
    "QueueStats",
    "check_receive_args",
    "check_visibility",
    "open_queue",
    "validate_queue_name",
]

ACCEPTED_SCHEMES = ("memory", "sqlite", "sqs", "https", "redis", "rediss")
DEFAULT_QUEUE_NAME = QUEUE_NAME


def open_queue(url: str, *, name: str | None = None, **options: Any) -> Queue:
    """Open a queue. The name comes from ``name``, else ``?name=`` in the URL, else the default.

    - ``memory://BROKER``: in-process; queues with one BROKER in one process are siblings.
    - ``sqlite:///abs/path/queue.db`` or ``sqlite://relative/queue.db``: one file, many
      queues, safe across processes. Extra options: ``poll_interval_s``, ``busy_timeout_s``.
    - ``sqs://NAME`` or ``https://sqs.REGION.amazonaws.com/ACCOUNT/NAME``: needs dlaas[aws].
    - ``redis://[:PASSWORD@]HOST:PORT/DB?stream=NAME`` (``rediss://`` for TLS): Redis
      Streams; needs dlaas[redis]. Extra option: ``reconnect_timeout_s``.

    Every backend takes ``max_receives`` (default 5): deliveries before dead-lettering.
    """
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme in ("sqs", "https"):
        return _open_sqs(url, name, options)
    if scheme in ("redis", "rediss"):
        return _open_redis(url, name, options)
    if scheme not in ("memory", "sqlite"):
        accepted = ", ".join(f"{s}://" for s in ACCEPTED_SCHEMES)
        raise ConfigError(f"unknown queue URL {url!r}; accepted schemes: {accepted}")

    query = parse_qs(parsed.query)
    unknown = sorted(set(query) - {"name"})
    if unknown:
        raise ConfigError(
            f"queue URL {url!r} has unknown parameter(s) {', '.join(unknown)}; "
            "the only one accepted is ?name=QUEUE"
        )
    queue_name = name or (query.get("name") or [DEFAULT_QUEUE_NAME])[0]
    max_receives = check_max_receives(options.pop("max_receives", DEFAULT_MAX_RECEIVES))
    try:
        validate_queue_name(queue_name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc

    if scheme == "memory":
        from dlaas.queue.memory import MemoryQueue

        _refuse_options(url, options, allowed=())
        broker = (parsed.netloc + parsed.path).strip("/") or "default"
        return MemoryQueue(broker, queue_name, max_receives=max_receives)

    from dlaas.queue.sqlite import SqliteQueue

    _refuse_options(url, options, allowed=("poll_interval_s", "busy_timeout_s"))
    path = unquote(parsed.netloc + parsed.path)
    if not path or path.endswith("/"):
        raise ConfigError(f"queue URL {url!r} names no database file; use sqlite:///path/queue.db")
    try:
        return SqliteQueue(path, queue_name, max_receives=max_receives, **options)
    except QueueError as exc:
        raise ConfigError(str(exc)) from exc


def _open_sqs(url: str, name: str | None, options: dict[str, Any]) -> Queue:
    try:
        from dlaas.queue.sqs import SqsQueue
    except ModuleNotFoundError as exc:
        if exc.name not in ("boto3", "botocore"):
            raise
        raise ConfigError(
            f"queue URL {url!r} needs boto3, which is not installed; "
            "install dlaas[aws] (pip install 'dlaas[aws]')"
        ) from exc
    queue: Queue = SqsQueue.from_url(url, name=name, **options)
    return queue


def _open_redis(url: str, name: str | None, options: dict[str, Any]) -> Queue:
    try:
        from dlaas.queue.redis import RedisQueue
    except ModuleNotFoundError as exc:
        if exc.name != "redis":
            raise
        raise ConfigError(
            f"queue URL {url!r} needs the redis client, which is not installed; "
            "install dlaas[redis] (pip install 'dlaas[redis]')"
        ) from exc
    max_receives = check_max_receives(options.pop("max_receives", DEFAULT_MAX_RECEIVES))
    _refuse_options(url, options, allowed=("reconnect_timeout_s",))
    return RedisQueue.open(url, name=name, max_receives=max_receives, **options)


def _refuse_options(url: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(("max_receives", *allowed))
        raise ConfigError(
            f"queue URL {url!r} does not take option(s) {', '.join(unknown)}; accepted: {accepted}"
        )
