"""The ORT classifier on the tiny model: batching, top-k, softmax, and its error paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlaas.errors import ImageError, ModelError
from dlaas.model import Classifier, ModelSpec, Prediction, build_tiny_model
from dlaas.model.classifier import batching_pays, softmax
from tests.conftest import jpeg_bytes


def test_predicts_sorted_softmax_top_k(tiny_spec: ModelSpec) -> None:
    clf = Classifier(tiny_spec)
    images = [jpeg_bytes(Image.new("RGB", (80, 60), c)) for c in [(250, 10, 10), (10, 10, 250)]]
    batch = np.stack([clf.preprocess(b) for b in images])

    results = clf.predict(batch, top_k=3)

    assert clf.name == "tiny"
    assert len(results) == 2
    for preds in results:
        assert len(preds) == 3
        scores = [p["score"] for p in preds]
        assert scores == sorted(scores, reverse=True)
        assert all(0 < s < 1 for s in scores)
        assert all(p["label"] == f"class {p['class_id']}" for p in preds)
    assert results[0] != results[1]  # different colours, different scores


def test_scores_are_the_softmax_of_the_logits(tiny_spec: ModelSpec) -> None:
    clf = Classifier(tiny_spec)
    batch = np.stack([clf.preprocess(jpeg_bytes(Image.new("RGB", (50, 50), (30, 200, 90))))])

    logits = clf.logits(batch)
    (preds,) = clf.predict(batch, top_k=len(tiny_spec.labels))

    expected = np.exp(logits[0] - logits[0].max())
    expected /= expected.sum()
    assert sum(p["score"] for p in preds) == pytest.approx(1.0)
    for p in preds:
        assert p["score"] == pytest.approx(float(expected[p["class_id"]]), rel=1e-5)


def test_batched_equals_one_by_one(tiny_spec: ModelSpec) -> None:
    clf = Classifier(tiny_spec)
    arrays = [
        clf.preprocess(jpeg_bytes(Image.new("RGB", (64, 64), (i * 40, 100, 200 - i * 30))))
        for i in range(5)
    ]

    together = clf.logits(np.stack(arrays))
    alone = np.concatenate([clf.logits(a[None]) for a in arrays])

    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_top_k_is_clipped_to_the_class_count_and_validated(tiny_spec: ModelSpec) -> None:
    clf = Classifier(tiny_spec)
    batch = np.zeros((1, 3, 224, 224), np.float32)

    assert len(clf.predict(batch, top_k=50)[0]) == len(tiny_spec.labels)
    assert clf.predict(np.zeros((0, 3, 224, 224), np.float32)) == []
    with pytest.raises(ValueError, match="top_k"):
        clf.predict(batch, top_k=0)


def test_wrong_batch_shape_is_a_model_error(tiny_spec: ModelSpec) -> None:
    clf = Classifier(tiny_spec)

    with pytest.raises(ModelError, match=r"shape \(1, 224, 224, 3\).*\(1, 3, 224, 224\)"):
        clf.predict(np.zeros((1, 224, 224, 3), np.float32))


def test_preprocess_raises_image_error_for_bad_bytes(tiny_spec: ModelSpec) -> None:
    with pytest.raises(ImageError, match="not an image"):
        Classifier(tiny_spec).preprocess(b"definitely not a picture")


def test_a_prediction_is_the_result_record_entry(tiny_spec: ModelSpec) -> None:
    clf = Classifier(tiny_spec)
    (preds,) = clf.predict(clf.preprocess(jpeg_bytes(Image.new("RGB", (40, 30))))[None])
    assert set(preds[0]) == set(Prediction.__annotations__) == {"class_id", "label", "score"}


def test_softmax_is_stable_for_large_logits() -> None:
    probabilities = softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))

    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0]])


def test_tiny_model_honours_num_classes(tmp_path: Path) -> None:
    spec = build_tiny_model(tmp_path, num_classes=3)

    assert spec.labels == ("class 0", "class 1", "class 2")
    assert (tmp_path / "labels.txt").read_text() == "class 0\nclass 1\nclass 2\n"
    assert len(Classifier(spec).predict(np.zeros((2, 3, 224, 224), np.float32))[1]) == 3


def test_a_missing_model_file_is_a_model_error(tiny_spec: ModelSpec, tmp_path: Path) -> None:
    broken = ModelSpec("x", tmp_path / "nope.onnx", tiny_spec.labels, tiny_spec.preprocessing)

    with pytest.raises(ModelError, match="cannot load model"):
        Classifier(broken)


def test_thread_count_is_validated(tiny_spec: ModelSpec) -> None:
    with pytest.raises(ModelError, match="intra_op_num_threads"):
        Classifier(tiny_spec, intra_op_num_threads=0)
    assert Classifier(tiny_spec, intra_op_num_threads=2, allow_spinning=True).predict(
        np.zeros((1, 3, 224, 224), np.float32)
    )


def test_a_batch_split_into_runs_scores_as_one_run(tiny_spec: ModelSpec) -> None:
    # Given a batch of 7 different images
    clf = Classifier(tiny_spec)
    colours = [(40 * i, 255 - 30 * i, 17 * i) for i in range(7)]
    batch = np.stack([clf.preprocess(jpeg_bytes(Image.new("RGB", (64, 48), c))) for c in colours])
    whole = clf.logits(batch)

    # When the forward pass runs 3 images at a time (the last run holds 1)
    assert clf.set_run_batch_size(3, largest=8) == 3

    # Then every image scores as in one run, in order
    np.testing.assert_allclose(clf.logits(batch), whole, rtol=1e-5, atol=1e-6)
    assert [p[0]["class_id"] for p in clf.predict(batch)] == whole.argmax(axis=1).tolist()


def test_the_run_size_is_measured_when_not_given(tiny_spec: ModelSpec) -> None:
    clf = Classifier(tiny_spec)

    chosen = clf.set_run_batch_size(0, largest=8)

    assert chosen in (1, 8)
    assert clf.run_batch_size == chosen
    assert clf.set_run_batch_size(0, largest=1) == 1  # nothing to compare


@pytest.mark.parametrize(
    ("ratios", "batch"),
    [
        ([0.5, 0.55, 0.6], True),  # a GPU or VNNI: batching clearly pays
        ([0.85, 0.88, 0.89, 0.95, 1.2], True),  # the median pair saves over 10%
        ([0.97, 1.0, 1.03], False),  # a tie (AVX2 without VNNI): run one at a time
        ([0.93, 0.94, 0.96, 1.1, 0.7], False),  # saves 6%: not clearly enough
        ([0.9, 0.9, 0.9], False),  # exactly the margin is not under it
        ([0.6, 1.2, 1.3], False),  # one lucky pair does not decide
        ([], False),  # nothing timed
    ],
)
def test_batching_must_pay_clearly_in_the_median_pair(ratios: list[float], batch: bool) -> None:
    assert batching_pays(ratios) is batch
