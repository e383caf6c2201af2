"""The queue interface, with SQS semantics so the same worker code runs on SQS.

A received message is invisible to others until its visibility timeout ends; the
receiver deletes it when done or it comes back. A message received more than
``max_receives`` times goes to the dead-letter queue instead of being delivered.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from dlaas.defaults import MAX_RECEIVES
from dlaas.errors import ConfigError

DEFAULT_MAX_RECEIVES = MAX_RECEIVES
DEFAULT_VISIBILITY_TIMEOUT_S = 30.0
DLQ_SUFFIX = "-dlq"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")  # what SQS accepts, so names port to it


@dataclass(frozen=True)
class Message:
    """One delivery of a message. ``receipt`` is valid only for this delivery."""

    id: str
    body: str
    receipt: str
    receive_count: int
    sent_at: float  # epoch seconds when first sent


@dataclass(frozen=True)
class QueueStats:
    visible: int
    in_flight: int
    oldest_age_s: float  # age of the oldest message not yet deleted; 0.0 when empty
    dead_lettered: int = 0


class Queue(ABC):
    """A named queue. ``sibling(name)`` opens another queue on the same backend.

    Reply queues and the dead-letter queue are siblings, so a message can name its
    reply queue by ``name`` alone.
    """

    name: str
    url: str
    max_receives: int = DEFAULT_MAX_RECEIVES

    def send(self, body: str) -> str:
        """Enqueue one message; return its ID."""
        return self.send_batch([body])[0]

    @abstractmethod
    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        """Enqueue all bodies or none of them; return their IDs in order."""

    def receive(
        self,
        max_messages: int = 1,
        wait_time_s: float = 0.0,
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
    ) -> list[Message]:
        """Return up to ``max_messages``; wait up to ``wait_time_s`` for the first one.

        Returns ``[]`` on timeout. Never spins: waiting sleeps or blocks.
        """
        check_receive_args(max_messages, wait_time_s, visibility_timeout_s)
        return self._receive(max_messages, wait_time_s, visibility_timeout_s)

    @abstractmethod
    def _receive(
        self, max_messages: int, wait_time_s: float, visibility_timeout_s: float
    ) -> list[Message]:
        """``receive`` with arguments already checked."""

    @abstractmethod
    def delete(self, receipt: str) -> None:
        """Delete a received message. A stale receipt is ignored (idempotent)."""

    def delete_batch(self, receipts: Sequence[str]) -> None:
        for receipt in receipts:
            self.delete(receipt)

    def change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        """Extend (heartbeat) or shorten a received message's invisibility.

        Raises ReceiptInvalid when the receipt is stale.
        """
        check_visibility(visibility_timeout_s)
        self._change_visibility(receipt, visibility_timeout_s)

    @abstractmethod
    def _change_visibility(self, receipt: str, visibility_timeout_s: float) -> None:
        """``change_visibility`` with the timeout already checked."""

    @abstractmethod
    def stats(self) -> QueueStats: ...

    @abstractmethod
    def sibling(self, name: str) -> Queue:
        """Open (creating if needed) the queue ``name`` on the same backend."""

    @abstractmethod
    def purge(self) -> None:
        """Drop every message."""

    def destroy(self) -> None:
        """Delete the queue itself (used for stale reply queues). Default: purge."""
        self.purge()

    def dead_letter(self) -> Queue:
        return self.sibling(self.dead_letter_name)

    @property
    def dead_letter_name(self) -> str:
        """The sibling that exhausted messages move to."""
        return self.name + DLQ_SUFFIX

    @property
    def is_dead_letter_queue(self) -> bool:
        """Like SQS, a dead-letter queue has no dead-letter queue of its own."""
        return is_dead_letter_name(self.name)

    def should_dead_letter(self, receive_count: int) -> bool:
        """The dead-letter rule, for a message about to be delivered again.

        A message already received ``max_receives`` times moves to the dead-letter
        queue on its next receive instead of being delivered; a DLQ keeps its messages.
        """
        return receive_count >= self.max_receives and not self.is_dead_letter_queue

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release connections; the default has none."""


def is_dead_letter_name(name: str) -> bool:
    return name.endswith(DLQ_SUFFIX)


def validate_queue_name(name: str) -> str:
    """Queue names follow SQS rules so that a setup moves to SQS unchanged."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"queue name {name!r} is invalid; use 1-80 characters from A-Z a-z 0-9 _ -"
        )
    return name


def check_max_receives(max_receives: object) -> int:
    """Deliveries before dead-lettering: a whole number >= 1."""
    if not isinstance(max_receives, int) or max_receives < 1:
        raise ConfigError(f"max_receives must be a whole number >= 1, not {max_receives!r}")
    return max_receives


def check_receive_args(max_messages: int, wait_time_s: float, visibility_timeout_s: float) -> None:
    if max_messages < 1:
        raise ValueError(f"max_messages must be >= 1, not {max_messages}")
    if not (wait_time_s >= 0 and math.isfinite(wait_time_s)):
        raise ValueError(f"wait_time_s must be a finite number >= 0, not {wait_time_s}")
    check_visibility(visibility_timeout_s)


def check_visibility(visibility_timeout_s: float) -> None:
    if not (visibility_timeout_s >= 0 and math.isfinite(visibility_timeout_s)):
        raise ValueError(
            f"visibility_timeout_s must be a finite number >= 0, not {visibility_timeout_s}"
        )
