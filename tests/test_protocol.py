"""The records that cross processes: their JSON round trips and the checks on reading back."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from dlaas import protocol
from dlaas.errors import StorageError


def test_a_result_record_round_trips_through_json_and_a_reply() -> None:
    record = protocol.result_record(
        job_id="j",
        image_id="i",
        status="done",
        model="m",
        worker_id="w",
        predictions=[{"class_id": 281, "label": "tabby, tabby cat", "score": 0.9}],
        probabilities=protocol.pack_scores(np.array([0.25, 0.75], dtype=np.float32)),
    )
    assert protocol.as_result(json.loads(json.dumps(record))) == record
    reply = protocol.Reply(job_id="j", image_id="i", status="done", result_key="k", result=record)
    again = protocol.Reply.from_json(reply.to_json())
    assert again.result == record
    scores = np.frombuffer(protocol.unpack_scores(record["probabilities"]), protocol.SCORES_DTYPE)
    assert scores.tolist() == [0.25, 0.75]


def test_a_failed_record_has_no_scores_and_says_why() -> None:
    record = protocol.result_record(
        job_id="j", image_id="i", status="failed", model="m", worker_id="w", error="bad JPEG"
    )
    assert "probabilities" not in record
    assert record["predictions"] == [] and record["error"] == "bad JPEG"


@pytest.mark.parametrize(
    ("reader", "body"),
    [
        (protocol.as_result, ["not", "a", "record"]),
        (protocol.as_result, {"image_id": "i"}),
        (protocol.as_manifest, {"job_id": "j", "images": []}),
        (protocol.as_manifest, "jobs/x.json"),
    ],
)
def test_a_record_of_the_wrong_shape_is_a_storage_error(reader: object, body: object) -> None:
    assert callable(reader)
    with pytest.raises(StorageError, match="may be corrupt"):
        reader(body)


def test_a_manifest_from_before_owners_reads_back() -> None:
    manifest = protocol.as_manifest({"job_id": "j", "created_at": 1.0, "images": []})
    assert "owner" not in manifest


def test_job_ids_sort_by_creation_time() -> None:
    first = protocol.new_job_id()
    time.sleep(0.002)
    second = protocol.new_job_id()
    assert first < second
    created = protocol.job_created_at(first)
    assert created is not None and abs(created - time.time()) < 5
    assert protocol.job_created_at("0" * 31) is None
