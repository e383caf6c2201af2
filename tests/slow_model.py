"""A classifier that takes a fixed, noticeable time per image, for tests that act mid-job.

The tiny model finishes a 150-image job in under two seconds on a fast worker, so a test that
presses Cancel "while the job runs" raced the worker and sometimes found the job complete.
This model adds a chain of convolutions to the tiny one (their sum nudges the logits, so ONNX
Runtime cannot drop them): each image costs tens of milliseconds whatever the machine's load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlaas.model.efficientnet import INPUT_NAME, IR_VERSION, OPSET, OUTPUT_NAME
from dlaas.model.labels import write_labels
from dlaas.model.spec import ModelSpec, Preprocessing

CHANNELS = 16


def build_slow_model(directory: Path, convolutions: int = 12, num_classes: int = 10) -> ModelSpec:
    """Write ``model.onnx`` and ``labels.txt``: the tiny model plus ``convolutions`` 3x3 layers."""
    directory.mkdir(parents=True, exist_ok=True)
    size = Preprocessing().input_size
    rng = np.random.default_rng(7)
    initializers = [
        numpy_helper.from_array(rng.normal(0, 2, (num_classes, 3)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (num_classes,)).astype(np.float32), "fc.b"),
        numpy_helper.from_array(np.full((1,), 1e-6, np.float32), "nudge"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["colours"], axis=1),
    ]
    previous, width = INPUT_NAME, 3
    for n in range(convolutions):
        weight = rng.normal(0, 0.1, (CHANNELS, width, 3, 3)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"conv{n}.w"))
        nodes.append(helper.make_node("Conv", [previous, f"conv{n}.w"], [f"c{n}"], pads=[1] * 4))
        previous, width = f"c{n}", CHANNELS
    nodes += [
        helper.make_node("ReduceMean", [previous], ["busy"], keepdims=1, axes=[1, 2, 3]),
        helper.make_node("Flatten", ["busy"], ["busy2"], axis=1),
        helper.make_node("Mul", ["busy2", "nudge"], ["small"]),
        helper.make_node("Add", ["colours", "small"], ["features"]),
        helper.make_node("Gemm", ["features", "fc.w", "fc.b"], [OUTPUT_NAME], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", num_classes])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx_path = directory / "model.onnx"
    onnx.save(model, str(onnx_path))
    labels = tuple(f"class {i}" for i in range(num_classes))
    write_labels(directory / "labels.txt", labels)
    return ModelSpec(name="slow", onnx_path=onnx_path, labels=labels, preprocessing=Preprocessing())
