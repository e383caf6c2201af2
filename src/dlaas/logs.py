"""Structured logs: one JSON object per line, one line per event.

Every line that concerns an image carries ``job_id`` and ``image_id`` so one image can
be followed from upload to result with ``grep <image_id>``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

import orjson

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, written with orjson: a log line costs the web tier
    about 20 µs of CPU where the standard library's encoder and a ``strftime`` per line
    cost 44 (two lines per image at the default level; docs/performance.md)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _ts(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one strftime per second, not per line
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # an int past 64 bits, say: the standard encoder
            return json.dumps(line, default=str, separators=(",", ":"))


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record comes, not what it was at set-up.

    A program that swaps stderr after configuring logs (a test harness capturing output, an
    embedding app redirecting it) would otherwise leave every later line, from any thread,
    writing into a stream that may be closed by then; the standard library's own last-resort
    handler follows ``sys.stderr`` the same way.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """The base class sets it once at set-up; the property reads it fresh instead."""


def configure_logging(level: str = "info") -> None:
    """Send dlaas's logs to stderr as JSON lines; quiet the access log's per-request noise."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
