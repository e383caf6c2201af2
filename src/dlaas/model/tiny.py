"""A tiny ONNX classifier with the real model's input contract, for fast pipeline tests.

Global average pooling then one dense layer with fixed pseudo-random weights: it loads in
milliseconds and its scores depend on the image's colours, so different images differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlaas.model.efficientnet import INPUT_NAME, IR_VERSION, OPSET, OUTPUT_NAME
from dlaas.model.labels import write_labels
from dlaas.model.spec import ModelSpec, Preprocessing

TINY_NAME = "tiny"


def build_tiny_model(directory: Path, num_classes: int = 10) -> ModelSpec:
    """Write ``model.onnx`` and ``labels.txt`` (``class 0``, ...) into ``directory``."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    preprocessing = Preprocessing()
    size = preprocessing.input_size
    rng = np.random.default_rng(20240601)
    weight = rng.normal(0.0, 2.0, (num_classes, 3)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, (num_classes,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
            helper.make_node("Gemm", ["features", "fc.w", "fc.b"], [OUTPUT_NAME], transB=1),
        ],
        TINY_NAME,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", num_classes])],
        initializer=[
            numpy_helper.from_array(weight, "fc.w"),
            numpy_helper.from_array(bias, "fc.b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx_path = directory / "model.onnx"
    onnx.save(model, str(onnx_path))
    labels = tuple(f"class {i}" for i in range(num_classes))
    write_labels(directory / "labels.txt", labels)
    return ModelSpec(
        name=TINY_NAME, onnx_path=onnx_path, labels=labels, preprocessing=preprocessing
    )
