"""The records and queue bodies that cross processes: JSON round trips, checks on reading."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from dlaas.errors import StorageError
from dlaas.jobs import layout, messages, records


def test_a_result_record_round_trips_through_json_and_a_reply() -> None:
    record = records.result_record(
        job_id="j",
        image_id="i",
        status="done",
        model="m",
        worker_id="w",
        predictions=[{"class_id": 281, "label": "tabby, tabby cat", "score": 0.9}],
        probabilities=records.pack_scores(np.array([0.25, 0.75], dtype=np.float32)),
    )
    assert records.as_result(json.loads(json.dumps(record))) == record
    reply = messages.Finished(record, stored=False, batch={"size": 2.0, "infer_ms": 3.5})
    again = messages.reply_from_json(messages.reply_to_json(reply))
    assert again == reply
    scores = np.frombuffer(records.unpack_scores(record["probabilities"]), records.SCORES_DTYPE)
    assert scores.tolist() == [0.25, 0.75]


def test_a_failed_record_has_no_scores_and_says_why() -> None:
    record = records.result_record(
        job_id="j", image_id="i", status="failed", model="m", worker_id="w", error="bad JPEG"
    )
    assert "probabilities" not in record
    assert record["predictions"] == [] and record["error"] == "bad JPEG"


@pytest.mark.parametrize(
    ("reader", "body"),
    [
        (records.as_result, ["not", "a", "record"]),
        (records.as_result, {"image_id": "i"}),
        (records.as_manifest, {"job_id": "j", "images": []}),
        (records.as_manifest, "jobs/x.json"),
    ],
)
def test_a_record_of_the_wrong_shape_is_a_storage_error(reader: object, body: object) -> None:
    assert callable(reader)
    with pytest.raises(StorageError, match="may be corrupt"):
        reader(body)


@pytest.mark.parametrize(
    "reply",
    [messages.Progress("j", "i"), messages.Cancelled("j", "i")],
)
def test_every_kind_of_reply_round_trips(reply: messages.Reply) -> None:
    assert messages.reply_from_json(messages.reply_to_json(reply)) == reply


def test_a_reply_of_an_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown reply kind"):
        messages.reply_from_json('{"kind": "maybe", "job_id": "j", "image_id": "i"}')
    with pytest.raises(ValueError, match="may be corrupt"):
        messages.reply_from_json('{"kind": "finished", "result": {}, "stored": true}')


def test_a_manifest_from_before_owners_reads_back() -> None:
    manifest = records.as_manifest({"job_id": "j", "created_at": 1.0, "images": []})
    assert "owner" not in manifest


def test_job_ids_sort_by_creation_time() -> None:
    first = layout.new_job_id()
    time.sleep(0.002)
    second = layout.new_job_id()
    assert first < second
    created = layout.job_created_at(first)
    assert created is not None and abs(created - time.time()) < 5
    assert layout.job_created_at("0" * 31) is None
