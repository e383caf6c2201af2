"""Bring-your-own models: what load_custom_model accepts, and what it refuses with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from dlaas.errors import ConfigError, ModelError
from dlaas.model import Classifier, Preprocessing, build_tiny_model, load_custom_model
from tests.conftest import jpeg_bytes

PP = Preprocessing()


@pytest.fixture()
def tiny_dir(tmp_path: Path) -> Path:
    build_tiny_model(tmp_path / "tiny", num_classes=4)
    return tmp_path / "tiny"


def test_loads_a_model_with_matching_labels(tiny_dir: Path) -> None:
    spec = load_custom_model(tiny_dir / "model.onnx", tiny_dir / "labels.txt", PP)

    assert spec.name == "model"
    assert spec.labels == ("class 0", "class 1", "class 2", "class 3")
    assert spec.preprocessing == PP


def test_missing_files_are_named(tiny_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"model file .*missing\.onnx not found"):
        load_custom_model(tiny_dir / "missing.onnx", tiny_dir / "labels.txt", PP)
    with pytest.raises(ModelError, match=r"labels file .*missing\.txt not found"):
        load_custom_model(tiny_dir / "model.onnx", tiny_dir / "missing.txt", PP)


def test_label_count_must_match_the_output_width(tiny_dir: Path) -> None:
    labels = tiny_dir / "three.txt"
    labels.write_text("a\nb\nc\n")

    with pytest.raises(ModelError, match=r"outputs 4 classes but .*three\.txt has 3 labels"):
        load_custom_model(tiny_dir / "model.onnx", labels, PP)


def test_labels_file_with_a_blank_line_is_refused(tiny_dir: Path) -> None:
    labels = tiny_dir / "gap.txt"
    labels.write_text("a\n\nc\nd\n\n")

    with pytest.raises(ModelError, match="empty line 2"):
        load_custom_model(tiny_dir / "model.onnx", labels, PP)


def test_input_size_must_match_the_preprocessing(tiny_dir: Path) -> None:
    small = Preprocessing(input_size=96, resize_size=110)

    with pytest.raises(ModelError, match=r"wants input shape \[\?, 3, 224, 224\].*--input-size"):
        load_custom_model(tiny_dir / "model.onnx", tiny_dir / "labels.txt", small)


def test_a_file_that_is_not_onnx_is_refused(tiny_dir: Path) -> None:
    bogus = tiny_dir / "bogus.onnx"
    bogus.write_bytes(b"\x00\x01 not protobuf \xff" * 20)

    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_custom_model(bogus, tiny_dir / "labels.txt", PP)


def _nhwc_model(path: Path, size: int, classes: int) -> None:
    """Mean over H and W of an NHWC batch, then a dense layer: a minimal NHWC classifier."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
            helper.make_node("Gemm", ["pooled", "w", "b"], ["scores"], transB=1),
        ],
        "nhwc",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", size, size, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", classes])],
        initializer=[
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(rng.normal(size=(classes, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_an_nhwc_model_with_its_own_preprocessing_runs_end_to_end(tmp_path: Path) -> None:
    _nhwc_model(tmp_path / "nhwc.onnx", 96, 2)
    (tmp_path / "labels.txt").write_text("dark\nlight\n")
    pp = Preprocessing(
        input_size=96, resize_size=100, mean=(0, 0, 0), std=(255, 255, 255), layout="NHWC"
    )

    spec = load_custom_model(tmp_path / "nhwc.onnx", tmp_path / "labels.txt", pp)
    clf = Classifier(spec)
    array = clf.preprocess(jpeg_bytes(Image.new("RGB", (300, 200), (255, 255, 255))))
    (preds,) = clf.predict(array[None], top_k=2)

    assert array.shape == (96, 96, 3)
    assert float(array.max()) == pytest.approx(1.0)
    assert {p["label"] for p in preds} == {"dark", "light"}
    assert sum(p["score"] for p in preds) == pytest.approx(1.0)


def test_a_symbolic_output_width_is_checked_when_the_model_runs(tiny_dir: Path) -> None:
    model = onnx.load(str(tiny_dir / "model.onnx"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(model, str(tiny_dir / "symbolic.onnx"))
    labels = tiny_dir / "two.txt"
    labels.write_text("a\nb\n")

    clf = Classifier(load_custom_model(tiny_dir / "symbolic.onnx", labels, PP))

    with pytest.raises(ModelError, match="outputs 4 scores but has 2 labels"):
        clf.predict(np.zeros((1, 3, 224, 224), np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": 256, "resize_size": 224}, "at least input_size"),
        ({"input_size": 0}, "positive"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be positive"),
        ({"mean": (float("nan"), 0.0, 0.0)}, "mean must be finite"),
        ({"layout": "CHW"}, "layout must be NCHW or NHWC"),
    ],
)
def test_invalid_preprocessing_is_a_config_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Preprocessing(**kwargs)  # type: ignore[arg-type]
