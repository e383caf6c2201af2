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
  estimated; see ``dlaas.queue.sqs_age``.
Every boto call goes through ``sqs_api.call``, which maps boto's errors to dlaas errors."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from dlaas.aws.clients import make_client
from dlaas.errors import ConfigError, QueueError, ReceiptInvalid
from dlaas.queue.base import (
    DEFAULT_MAX_RECEIVES,
    Message,
    Queue,
    QueueStats,
    check_max_receives,
    is_dead_letter_name,
    validate_queue_name,
)
from dlaas.queue.sqs_age import SendLog
from dlaas.queue.sqs_api import (
    ANY,
    ATTRIBUTES,
    MAX_BATCH,
    MAX_WAIT_S,
    MISSING,
    PURGE_IN_PROGRESS,
    STALE,
    STALE_RECEIPT,
    call,
    chunks,
    parse_url,
    to_message,
    whole_seconds,
)

log = logging.getLogger("dlaas.queue")

DLQ_RETENTION_S = 14 * 24 * 60 * 60  # the longest SQS keeps a message: time to inspect


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
        if max_receives is not None:
            check_max_receives(max_receives)
        self.name = name
        self.client = client or make_client("sqs", region=region, endpoint_url=endpoint_url)
        self._owns_client = client is None if _owns_client is None else _owns_client
        self._sends = SendLog()
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
        """Open ``sqs://NAME`` (``sqs://`` alone uses ``name``) or an https queue URL."""
        name, queue_url, endpoint_url, region = parse_url(url, name, endpoint_url, region)
        return cls(
            name,
            queue_url=queue_url,
            endpoint_url=endpoint_url,
            region=region,
            max_receives=max_receives,
            create=create,
        )

    def _call(self, action: str, method: Callable[..., Any], **options: Any) -> dict[str, Any]:
        return call(self.name, action, method, **options)

    # Sending --------------------------------------------------------------------

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        """Send in chunks of at most 10 messages and 256 KB; retry entries SQS refused.

        SQS cannot send several batches atomically: if a chunk still fails after its
        retries, QueueError is raised and earlier chunks stay sent. Bodies carry only
        IDs, so a stray message for a refused job is processed harmlessly.
        """
        ids: list[str] = []
        sent_at = time.time()
        for chunk in chunks(list(bodies)):
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
        visibility = whole_seconds(visibility_timeout_s)
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
                MessageSystemAttributeNames=ATTRIBUTES,
            )
            got = [to_message(m) for m in response.get("Messages", ())]
            messages += got
            if not got and (messages or wait == 0):
                break
        return messages

    def delete(self, receipt: str) -> None:
        # A stale receipt was deleted already, or re-delivered: nothing for us to delete.
        delete = self.client.delete_message
        self._call(
            "delete",
            delete,
            allow=(STALE,),
            QueueUrl=self.queue_url,
            ReceiptHandle=receipt,
        )

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
            failed = [f for f in response.get("Failed", ()) if f.get("Code") not in STALE_RECEIPT]
            if failed:
                detail = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
                raise QueueError(f"SQS could not delete {len(failed)} message(s): {detail}")

    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        response = self._call(
            "change the visibility of a message",
            self.client.change_message_visibility,
            allow=(STALE,),
            QueueUrl=self.queue_url,
            ReceiptHandle=receipt,
            VisibilityTimeout=whole_seconds(visibility_timeout_s),
        )
        if "Error" in response:
            raise ReceiptInvalid(
                f"receipt is no longer valid on {self.name}: the message was deleted "
                "or delivered again"
            )

    # Stats, siblings, lifecycle ---------------------------------------------------

    def stats(self) -> QueueStats:
        visible, in_flight = self._counts(self.queue_url)
        dead = 0
        if self._dlq_url is not None:
            with contextlib.suppress(QueueError):  # a deleted DLQ holds no dead letters
                dead = sum(self._counts(self._dlq_url))
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
        same = name == self.name
        return SqsQueue(
            name,
            client=self.client,
            queue_url=self.queue_url if same else None,
            max_receives=self.max_receives,
            create=not same,
            dead_letter=False,
            lazy=not same,
            _owns_client=False,
        )

    def dead_letter(self) -> Queue:
        """The queue the redrive policy names (``NAME-dlq`` when this module made it)."""
        return self.sibling(self._dlq_name or self.dead_letter_name)

    def purge(self) -> None:
        purge, busy = self.client.purge_queue, (PURGE_IN_PROGRESS,)
        if "Error" in self._call("purge", purge, allow=busy, QueueUrl=self.queue_url):
            # SQS allows one purge a minute; drop what is visible by hand meanwhile.
            while batch := self.receive(max_messages=MAX_BATCH, visibility_timeout_s=60):
                self.delete_batch([m.receipt for m in batch])

    def destroy(self) -> None:
        """Delete the queue itself; a queue that is already gone is fine."""
        action, queue_url = "delete the queue", self._queue_url
        if queue_url is None:
            get_url = self.client.get_queue_url
            found = self._call(action, get_url, allow=(MISSING,), QueueName=self.name)
            if "Error" in found:
                return
            queue_url = str(found["QueueUrl"])
        self._call(action, self.client.delete_queue, allow=(MISSING,), QueueUrl=queue_url)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def _resolve(self, create: bool, max_receives: int, dead_letter: bool) -> str:
        found = self._call(
            "open",
            self.client.get_queue_url,
            allow=(MISSING,),
            fail=lambda why: ConfigError(
                f"cannot open SQS queue {self.name!r} at {self._endpoint()}: {why}"
            ),
            QueueName=self.name,
        )
        if "Error" not in found:
            return str(found["QueueUrl"])
        if not create:
            raise ConfigError(
                f"SQS queue {self.name!r} does not exist at {self._endpoint()}; create it "
                "(deploy/aws/dlaas.yaml does) or fix the name in --queue"
            )
        attributes: dict[str, str] = {}
        if is_dead_letter_name(self.name):
            attributes["MessageRetentionPeriod"] = str(DLQ_RETENTION_S)
        elif dead_letter:
            dlq = SqsQueue(
                self.dead_letter_name, client=self.client, create=True, _owns_client=False
            )
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq._arn(), "maxReceiveCount": str(max_receives)}
            )
        response = self._call(
            "create",
            self.client.create_queue,
            fail=lambda why: QueueError(f"cannot create SQS queue {self.name!r}: {why}"),
            QueueName=self.name,
            Attributes=attributes,
        )
        log.info("sqs_queue_created", extra={"queue": self.name})
        return str(response["QueueUrl"])

    def _read_redrive(self, requested: int | None) -> None:
        policy = self._attributes(self._queue_url, "RedrivePolicy").get("RedrivePolicy")
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
        get_url = self.client.get_queue_url
        found = self._call("find", get_url, allow=(ANY,), QueueName=self._dlq_name)
        self._dlq_url = None if "Error" in found else str(found["QueueUrl"])

    def _arn(self) -> str:
        return str(self._attributes(self._queue_url, "QueueArn")["QueueArn"])

    def _counts(self, queue_url: str) -> tuple[int, int]:
        visible, hidden = "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"
        attributes = self._attributes(queue_url, visible, hidden)
        return int(attributes.get(visible, 0)), int(attributes.get(hidden, 0))

    def _attributes(self, queue_url: str | None, *names: str) -> dict[str, Any]:
        response = self._call(
            "read the attributes of",
            self.client.get_queue_attributes,
            QueueUrl=queue_url,
            AttributeNames=list(names),
        )
        attributes: dict[str, Any] = response.get("Attributes", {})
        return attributes

    def _endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", None) or "AWS")
