"""The log line's shape: one JSON object, the fields a reader greps for."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import pytest

from dlaas.logs import JsonFormatter, configure_logging


def record(msg: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("dlaas.web", logging.INFO, __file__, 1, msg, None, None)
    made.__dict__.update(extra)
    return made


def test_a_line_is_one_json_object_with_the_events_fields() -> None:
    line = JsonFormatter().format(record("image_accepted", job_id="j1", image_id="i1", n=2.5))
    assert "\n" not in line
    body = json.loads(line)
    assert body["event"] == "image_accepted" and body["logger"] == "dlaas.web"
    assert body["level"] == "info" and (body["job_id"], body["image_id"], body["n"]) == (
        "j1",
        "i1",
        2.5,
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["ts"])


def test_the_time_is_the_records_to_the_millisecond_across_seconds() -> None:
    formatter = JsonFormatter()
    first, second = record("a"), record("b")
    first.created, second.created = 1_767_607_200.125, 1_767_607_201.5
    assert json.loads(formatter.format(first))["ts"] == "2026-01-05T10:00:00.125Z"
    assert json.loads(formatter.format(second))["ts"] == "2026-01-05T10:00:01.500Z"


def test_odd_values_are_written_not_dropped() -> None:
    body = json.loads(
        JsonFormatter().format(record("odd", big=2**70, thing=object(), keys={1: "one"}))
    )
    assert body["big"] == 2**70 and body["thing"].startswith("<object")
    assert body["keys"] == {"1": "one"}


def test_an_exception_travels_in_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    body = json.loads(JsonFormatter().format(failed))
    assert "ValueError: boom" in body["exc"]


def test_lines_follow_stderr_when_it_is_swapped_after_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Set up against one stderr that is later closed, log against another: the line goes
    to the stderr of the moment, and nothing complains of a closed file."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        configure_logging("info")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("dlaas.worker").info("worker_ready", extra={"worker_id": "w1"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    body = json.loads(second.getvalue())
    assert (body["event"], body["worker_id"]) == ("worker_ready", "w1")
    assert "Logging error" not in second.getvalue()
