"""Amazon SQS (or an SQS-compatible service) as the queue: ``sqs://NAME`` or a queue URL.

SQS already has the semantics the interface describes, so this module mostly maps:

- receive: long polling (at most 20 s a call). A batch of more than 10 is filled by
  further receives that do not wait, so the caller's wait budget is never exceeded.
- the heartbeat is ``change_message_visibility``; timeouts are rounded up to whole seconds.
- dead letters: the queue's redrive policy (``maxReceiveCount``) moves a message to the
  dead-letter queue on the receive after its last allowed delivery. The queue's own
  policy is the truth; ``max_receives`` is used only when this module creates the queue.
- stats: ``ApproximateNumberOfMessages`` / ``...NotVisible`` of the queue and its DLQ.
  SQS keeps no age of the oldest message outside CloudWatch, so ``oldest_age_s`` is
  estimated; see ``_SendLog``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from dlaas.aws.clients import describe_error, error_code, make_client
from dlaas.errors import ConfigError, QueueError, ReceiptInvalid
from dlaas.queue import validate_queue_name
from dlaas.queue.base import (
    DEFAULT_MAX_RECEIVES,
    DLQ_SUFFIX,
    Message,
    Queue,
    QueueStats,
)

log = logging.getLogger("dlaas.queue")

MAX_WAIT_S = 20  # SQS's longest long poll
MAX_BATCH = 10  # SQS's most messages per receive, send or delete call
MAX_BATCH_BYTES = 256 * 1024  # SQS's limit on one send batch's total payload
MAX_VISIBILITY_S = 12 * 60 * 60
DLQ_RETENTION_S = 14 * 24 * 60 * 60  # the longest SQS keeps a message: time to inspect
_MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
_STALE_RECEIPT = (
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
)
_ATTRIBUTES = ["SentTimestamp", "ApproximateReceiveCount"]


class _SendLog:
    """Estimates the oldest waiting message's age from the sends this process made.

    SQS exposes that age only as a CloudWatch metric (one-minute resolution, another
    permission). Instead: assume messages leave roughly oldest-first, so the ``n``
    messages the queue holds are the ``n`` most recently sent, and the oldest of them
    was sent when this process sent the ``n``-th newest. A process that sent fewer
    than ``n`` (a standalone controller, or messages from other web processes) falls
    back to the oldest send it knows, and then to the time it first saw the queue
    non-empty; these are lower bounds. The queue seen empty resets everything.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._sends: deque[tuple[float, int]] = deque(maxlen=max_entries)
        self._nonempty_since: float | None = None
        self._lock = threading.Lock()

    def sent(self, count: int, at: float) -> None:
        with self._lock:
            self._sends.append((at, count))

    def oldest_age_s(self, outstanding: int, now: float) -> float:
        with self._lock:
            if outstanding <= 0:
                self._sends.clear()
                self._nonempty_since = None
                return 0.0
            if self._nonempty_since is None:
                self._nonempty_since = now
            oldest = self._nonempty_since
            remaining = outstanding
            for index in range(len(self._sends) - 1, -1, -1):
                sent_at, count = self._sends[index]
                oldest = min(oldest, sent_at)
                remaining -= count
                if remaining <= 0:
                    # Older sends are assumed consumed: forget them.
                    for _ in range(index):
                        self._sends.popleft()
                    oldest = sent_at
                    break
            return max(0.0, now - oldest)


class SqsQueue(Queue):
    """One SQS queue. Siblings share this queue's client, endpoint and account."""

    def __init__(
        self,
        name: str,
        *,
        client: Any = None,
        queue_url: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_receives: int | None = None,
        create: bool = False,
        dead_letter: bool = True,
        lazy: bool = False,
        _owns_client: bool | None = None,
    ) -> None:
        """Resolve (and with ``create``, create) the queue now, so a bad name fails at start.

        ``dead_letter`` (with ``create``): also create ``NAME-dlq`` and a redrive policy.
        ``lazy``: resolve on first use instead (siblings), raising QueueError then.
        """
        try:
            validate_queue_name(name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if max_receives is not None and (not isinstance(max_receives, int) or max_receives < 1):
            raise ConfigError(f"max_receives must be a whole number >= 1, not {max_receives!r}")
        self.name = name
        self.client = client or make_client("sqs", region=region, endpoint_url=endpoint_url)
        self._owns_client = client is None if _owns_client is None else _owns_client
        self._sends = _SendLog()
        self._dlq_name: str | None = None
        self._dlq_url: str | None = None
        self.max_receives = max_receives or DEFAULT_MAX_RECEIVES
        self.url = queue_url or f"sqs://{name}"
        self._queue_url = queue_url
        self._requested = max_receives
        self._create = create
        self._with_dlq = dead_letter
        self._ready = False
        self._lock = threading.Lock()
        if not lazy:
            self._ensure()

    @property
    def queue_url(self) -> str:
        """The queue's SQS URL, resolved (or created) on first use for a lazy sibling."""
        if not self._ready:
            try:
                self._ensure()
            except ConfigError as exc:
                raise QueueError(str(exc)) from None
        assert self._queue_url is not None
        return self._queue_url

    def _ensure(self) -> None:
        with self._lock:
            if self._ready:
                return
            if self._queue_url is None:
                self._queue_url = self._resolve(self._create, self.max_receives, self._with_dlq)
            self.url = self._queue_url
            self._read_redrive(self._requested)
            self._ready = True

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        name: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_receives: int | None = None,
        create: bool = False,
    ) -> SqsQueue:
        """Open ``sqs://NAME`` (``sqs://`` alone uses ``name``) or an https queue URL.

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
            return cls(
                queue_name,
                endpoint_url=endpoint_url,
                region=region,
                max_receives=max_receives,
                create=create,
            )
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
            return cls(
                parts[1],
                queue_url=url,
                endpoint_url=endpoint_url,
                region=region,
                max_receives=max_receives,
            )
        raise ConfigError(f"queue URL {url!r} is not sqs://NAME or an https SQS queue URL")

    # Sending --------------------------------------------------------------------

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        """Send in chunks of at most 10 messages and 256 KB; retry entries SQS refused.

        SQS cannot send several batches atomically: if a chunk still fails after its
        retries, QueueError is raised and earlier chunks stay sent. Bodies carry only
        IDs, so a stray message for a refused job is processed harmlessly.
        """
        ids: list[str] = []
        sent_at = time.time()
        for chunk in _chunks(list(bodies)):
            ids += self._send_chunk(chunk)
        if ids:
            self._sends.sent(len(ids), sent_at)
        return ids

    def _send_chunk(self, bodies: list[str]) -> list[str]:
        entries = {str(i): body for i, body in enumerate(bodies)}
        ids: dict[str, str] = {}
        for attempt in range(3):
            response = self._call(
                "send",
                self.client.send_message_batch,
                QueueUrl=self.queue_url,
                Entries=[{"Id": k, "MessageBody": v} for k, v in entries.items()],
            )
            for ok in response.get("Successful", ()):
                ids[ok["Id"]] = ok["MessageId"]
                entries.pop(ok["Id"], None)
            failed = response.get("Failed", ())
            if not entries:
                break
            if any(f.get("SenderFault") for f in failed) or attempt == 2:
                detail = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
                raise QueueError(f"SQS refused {len(entries)} message(s) on {self.name}: {detail}")
            time.sleep(0.1 * 2**attempt)
        return [ids[str(i)] for i in range(len(bodies))]

    # Receiving ------------------------------------------------------------------

    def _receive(
        self, max_messages: int, wait_time_s: float, visibility_timeout_s: float
    ) -> list[Message]:
        deadline = time.monotonic() + wait_time_s
        visibility = _whole_seconds(visibility_timeout_s)
        messages: list[Message] = []
        polls = 0
        while len(messages) < max_messages:
            if not messages and polls and time.monotonic() >= deadline:
                break  # the budget is spent
            polls += 1
            if messages:
                wait = 0  # filling a batch: take what is there, never wait again
            else:
                # Whole seconds only, rounded down so the caller's budget holds (give
                # or take the time spent getting here); under one second left means
                # one last poll that does not wait.
                remaining_s = deadline - time.monotonic() + 0.1
                wait = max(0, min(MAX_WAIT_S, math.floor(remaining_s)))
            response = self._call(
                "receive",
                self.client.receive_message,
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(MAX_BATCH, max_messages - len(messages)),
                WaitTimeSeconds=wait,
                VisibilityTimeout=visibility,
                MessageSystemAttributeNames=_ATTRIBUTES,
            )
            got = [_message(m) for m in response.get("Messages", ())]
            messages += got
            if not got and (messages or wait == 0):
                break
        return messages

    def delete(self, receipt: str) -> None:
        try:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except ClientError as exc:
            if _is_stale(exc):
                return  # deleted already, or re-delivered: nothing for us to delete
            raise self._error("delete", exc) from exc
        except BotoCoreError as exc:
            raise self._error("delete", exc) from exc

    def delete_batch(self, receipts: Sequence[str]) -> None:
        receipts = list(receipts)
        for start in range(0, len(receipts), MAX_BATCH):
            chunk = receipts[start : start + MAX_BATCH]
            response = self._call(
                "delete",
                self.client.delete_message_batch,
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)],
            )
            failed = [f for f in response.get("Failed", ()) if f.get("Code") not in _STALE_RECEIPT]
            if failed:
                detail = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
                raise QueueError(f"SQS could not delete {len(failed)} message(s): {detail}")

    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        try:
            self.client.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=receipt,
                VisibilityTimeout=_whole_seconds(visibility_timeout_s),
            )
        except ClientError as exc:
            if _is_stale(exc):
                raise ReceiptInvalid(
                    f"receipt is no longer valid on {self.name}: the message was deleted "
                    "or delivered again"
                ) from None
            raise self._error("change the visibility of a message", exc) from exc
        except BotoCoreError as exc:
            raise self._error("change the visibility of a message", exc) from exc

    # Stats, siblings, lifecycle ---------------------------------------------------

    def stats(self) -> QueueStats:
        visible, in_flight = self._counts(self.queue_url)
        dead = 0
        if self._dlq_url is not None:
            try:
                dead = sum(self._counts(self._dlq_url))
            except QueueError:
                dead = 0  # the DLQ was deleted: nothing is dead-lettered any more
        return QueueStats(
            visible=visible,
            in_flight=in_flight,
            oldest_age_s=self._sends.oldest_age_s(visible + in_flight, time.time()),
            dead_lettered=dead,
        )

    def sibling(self, name: str) -> SqsQueue:
        """Get or create ``name`` on the same endpoint. Siblings get no DLQ of their own.

        The queue is looked up (and created) on first use, so destroying a sibling that
        is already gone never creates it first.
        """
        if name == self.name:
            return SqsQueue(
                name,
                client=self.client,
                queue_url=self.queue_url,
                max_receives=self.max_receives,
                _owns_client=False,
            )
        return SqsQueue(
            name,
            client=self.client,
            max_receives=self.max_receives,
            create=True,
            dead_letter=False,
            lazy=True,
            _owns_client=False,
        )

    def dead_letter(self) -> Queue:
        """The queue the redrive policy names (``NAME-dlq`` when this module made it)."""
        return self.sibling(self._dlq_name or self.name + DLQ_SUFFIX)

    def purge(self) -> None:
        try:
            self.client.purge_queue(QueueUrl=self.queue_url)
        except ClientError as exc:
            if error_code(exc) not in ("AWS.SimpleQueueService.PurgeQueueInProgress",):
                raise self._error("purge", exc) from exc
            # SQS allows one purge a minute; drop what is visible by hand meanwhile.
            while batch := self.receive(max_messages=MAX_BATCH, visibility_timeout_s=60):
                self.delete_batch([m.receipt for m in batch])
        except BotoCoreError as exc:
            raise self._error("purge", exc) from exc

    def destroy(self) -> None:
        """Delete the queue itself; a queue that is already gone is fine."""
        try:
            queue_url = self._queue_url
            if queue_url is None:
                queue_url = str(self.client.get_queue_url(QueueName=self.name)["QueueUrl"])
            self.client.delete_queue(QueueUrl=queue_url)
        except ClientError as exc:
            if error_code(exc) not in _MISSING_QUEUE:
                raise self._error("delete the queue", exc) from exc
        except BotoCoreError as exc:
            raise self._error("delete the queue", exc) from exc

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    # Internals ----------------------------------------------------------------------

    def _resolve(self, create: bool, max_receives: int, dead_letter: bool) -> str:
        try:
            response = self.client.get_queue_url(QueueName=self.name)
            return str(response["QueueUrl"])
        except ClientError as exc:
            if error_code(exc) not in _MISSING_QUEUE:
                raise self._config_error(exc) from None
        except BotoCoreError as exc:
            raise self._config_error(exc) from None
        if not create:
            raise ConfigError(
                f"SQS queue {self.name!r} does not exist at {self._endpoint()}; create it "
                "(deploy/aws/dlaas.yaml does) or fix the name in --queue"
            )
        attributes: dict[str, str] = {}
        if self.name.endswith(DLQ_SUFFIX):
            attributes["MessageRetentionPeriod"] = str(DLQ_RETENTION_S)
        elif dead_letter:
            dlq = SqsQueue(
                self.name + DLQ_SUFFIX, client=self.client, create=True, _owns_client=False
            )
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq._arn(), "maxReceiveCount": str(max_receives)}
            )
        try:
            response = self.client.create_queue(QueueName=self.name, Attributes=attributes)
        except (BotoCoreError, ClientError) as exc:
            raise QueueError(
                f"cannot create SQS queue {self.name!r}: {describe_error(exc)}"
            ) from exc
        log.info("sqs_queue_created", extra={"queue": self.name})
        return str(response["QueueUrl"])

    def _read_redrive(self, requested: int | None) -> None:
        attributes = self._call(
            "read the attributes of",
            self.client.get_queue_attributes,
            QueueUrl=self._queue_url,
            AttributeNames=["RedrivePolicy"],
        ).get("Attributes", {})
        policy = attributes.get("RedrivePolicy")
        if not policy:
            return
        redrive = json.loads(policy)
        actual = int(redrive["maxReceiveCount"])
        if requested is not None and requested != actual:
            log.warning(
                "sqs_max_receives_differs",
                extra={"queue": self.name, "requested": requested, "queue_policy": actual},
            )
        self.max_receives = actual
        self._dlq_name = str(redrive["deadLetterTargetArn"]).rsplit(":", 1)[-1]
        try:
            response = self.client.get_queue_url(QueueName=self._dlq_name)
            self._dlq_url = str(response["QueueUrl"])
        except (BotoCoreError, ClientError):
            self._dlq_url = None

    def _arn(self) -> str:
        attributes = self._call(
            "read the attributes of",
            self.client.get_queue_attributes,
            QueueUrl=self._queue_url,
            AttributeNames=["QueueArn"],
        )
        return str(attributes["Attributes"]["QueueArn"])

    def _counts(self, queue_url: str) -> tuple[int, int]:
        response = self._call(
            "read the attributes of",
            self.client.get_queue_attributes,
            QueueUrl=queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )
        attributes = response.get("Attributes", {})
        return (
            int(attributes.get("ApproximateNumberOfMessages", 0)),
            int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )

    def _call(self, action: str, method: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = method(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(action, exc) from exc
        return response

    def _error(self, action: str, exc: BaseException) -> QueueError:
        if error_code(exc) in _MISSING_QUEUE:
            return QueueError(
                f"SQS queue {self.name!r} no longer exists (while trying to {action})"
            )
        return QueueError(f"SQS {action} on queue {self.name!r} failed: {describe_error(exc)}")

    def _config_error(self, exc: BaseException) -> ConfigError:
        return ConfigError(
            f"cannot open SQS queue {self.name!r} at {self._endpoint()}: {describe_error(exc)}"
        )

    def _endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", None) or "AWS")


def _message(raw: dict[str, Any]) -> Message:
    attributes = raw.get("Attributes", {})
    return Message(
        id=str(raw["MessageId"]),
        body=str(raw["Body"]),
        receipt=str(raw["ReceiptHandle"]),
        receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        sent_at=int(attributes.get("SentTimestamp", time.time() * 1000)) / 1000.0,
    )


def _whole_seconds(seconds: float) -> int:
    """SQS takes whole seconds: round up, so a lease is never shorter than asked."""
    return min(MAX_VISIBILITY_S, math.ceil(seconds))


def _is_stale(exc: ClientError) -> bool:
    code = error_code(exc)
    if code in _STALE_RECEIPT:
        return True
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return code == "InvalidParameterValue" and "receipt" in message


def _chunks(bodies: list[str]) -> list[list[str]]:
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for body in bodies:
        length = len(body.encode())
        if current and (len(current) == MAX_BATCH or size + length > MAX_BATCH_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(body)
        size += length
    if current:
        chunks.append(current)
    return chunks
