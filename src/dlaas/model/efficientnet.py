"""EfficientNet-Lite0, -Lite1 and -Lite2 as ONNX graphs, from state dicts of numpy arrays.

Mirrors the reference (PyPI ``efficientnet-lite-pytorch==0.1.0``) op for op:

- TensorFlow "SAME" padding, computed statically for the variant's input size (extra
  pixel at the end when the total is odd);
- batch norm with eps 1e-3, folded here into the preceding convolution;
- ReLU6 after every convolution except a block's projection; no squeeze-and-excitation;
- the blocks of ``lite.py``: Lite0's, scaled by the variant's width and depth;
- a residual add when a block keeps its stride at 1 and its channel count;
- global average pooling, then the linear classifier (dropout is off at inference).

The output is the logits; the classifier applies the softmax.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlaas.errors import ModelError
from dlaas.model.lite import HEAD_CHANNELS, LITE0, STEM_CHANNELS, LiteVariant, Stage

OPSET = 17
IR_VERSION = 8  # the IR that goes with opset 17; readable by every supported onnxruntime
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
BN_EPSILON = 1e-3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "SAME": ``(pad_begin, pad_end, out_size)`` for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class _GraphBuilder:
    """Accumulates nodes and folded initializers; tracks which weights were used."""

    def __init__(self, weights: dict[str, np.ndarray], model: str = LITE0.title) -> None:
        self.weights = weights
        self.model = model
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constant("relu6.min", np.array(0.0, dtype=np.float32))
        self._constant("relu6.max", np.array(6.0, dtype=np.float32))

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.weights:
            raise ModelError(f"weights file lacks {name}; is it an {self.model} state dict?")
        array = self.weights[name]
        if array.shape != shape:
            raise ModelError(
                f"weights tensor {name} has shape {array.shape}, expected {shape} for {self.model}"
            )
        self.used.add(name)
        return array.astype(np.float64)

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def conv_bn(
        self,
        x: str,
        conv: str,
        bn: str,
        *,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        size: int,
        depthwise: bool = False,
        relu6: bool = True,
    ) -> tuple[str, int]:
        """Conv (no bias) + batch norm folded into one Conv, then ReLU6 if asked."""
        group = in_channels if depthwise else 1
        w = self.take(f"{conv}.weight", (out_channels, in_channels // group, kernel, kernel))
        gamma = self.take(f"{bn}.weight", (out_channels,))
        beta = self.take(f"{bn}.bias", (out_channels,))
        mean = self.take(f"{bn}.running_mean", (out_channels,))
        var = self.take(f"{bn}.running_var", (out_channels,))
        self.used.add(f"{bn}.num_batches_tracked")  # training bookkeeping only
        scale = gamma / np.sqrt(var + BN_EPSILON)
        weight = self._constant(f"{conv}.w", (w * scale[:, None, None, None]).astype(np.float32))
        bias = self._constant(f"{conv}.b", (beta - mean * scale).astype(np.float32))

        begin, end, out_size = same_padding(size, kernel, stride)
        y = f"{conv}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, weight, bias],
                [y],
                name=conv,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[begin, begin, end, end],
                group=group,
            )
        )
        if relu6:
            y = self.relu6(y)
        return y, out_size

    def relu6(self, x: str) -> str:
        y = f"{x}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, "relu6.min", "relu6.max"], [y], name=y))
        return y

    def add(self, a: str, b: str, name: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [name], name=name))
        return name

    def mbconv(
        self, x: str, index: int, stage: Stage, *, first: bool, size: int
    ) -> tuple[str, int]:
        prefix = f"_blocks.{index}"
        in_channels = stage.in_channels if first else stage.out_channels
        stride = stage.stride if first else 1
        hidden = in_channels * stage.expand_ratio
        y = x
        if stage.expand_ratio != 1:
            y, _ = self.conv_bn(
                y, f"{prefix}._expand_conv", f"{prefix}._bn0",
                in_channels=in_channels, out_channels=hidden, kernel=1, stride=1, size=size,
            )  # fmt: skip
        y, out_size = self.conv_bn(
            y, f"{prefix}._depthwise_conv", f"{prefix}._bn1",
            in_channels=hidden, out_channels=hidden, kernel=stage.kernel, stride=stride,
            size=size, depthwise=True,
        )  # fmt: skip
        y, _ = self.conv_bn(
            y, f"{prefix}._project_conv", f"{prefix}._bn2",
            in_channels=hidden, out_channels=stage.out_channels, kernel=1, stride=1,
            size=out_size, relu6=False,
        )  # fmt: skip
        if stride == 1 and in_channels == stage.out_channels:
            y = self.add(y, x, f"{prefix}.residual")
        return y, out_size


def build_efficientnet_lite(
    weights: dict[str, np.ndarray], variant: LiteVariant = LITE0
) -> onnx.ModelProto:
    """The full graph, input ``[batch, 3, size, size]`` (NCHW) to logits ``[batch, 1000]``,
    where ``size`` is the variant's input size (224 for Lite0)."""
    g = _GraphBuilder(weights, variant.title)
    x, size = g.conv_bn(
        INPUT_NAME, "_conv_stem", "_bn0",
        in_channels=3, out_channels=STEM_CHANNELS, kernel=3, stride=2, size=variant.input_size,
    )  # fmt: skip
    index = 0
    stages = variant.stages
    for stage in stages:
        for repeat in range(stage.repeats):
            x, size = g.mbconv(x, index, stage, first=repeat == 0, size=size)
            index += 1
    x, size = g.conv_bn(
        x, "_conv_head", "_bn1",
        in_channels=stages[-1].out_channels, out_channels=HEAD_CHANNELS,
        kernel=1, stride=1, size=size,
    )  # fmt: skip
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    fc_w = g.take("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS)).astype(np.float32)
    fc_b = g.take("_fc.bias", (NUM_CLASSES,)).astype(np.float32)
    g.nodes.append(
        helper.make_node(
            "Gemm",
            ["features", g._constant("_fc.w", fc_w), g._constant("_fc.b", fc_b)],
            [OUTPUT_NAME],
            name="fc",
            transB=1,
        )
    )

    unused = sorted(set(weights) - g.used)
    if unused:
        raise ModelError(
            f"weights file has tensors {variant.title} does not use: {', '.join(unused[:5])}"
        )

    shape: list[str | int] = ["batch", 3, variant.input_size, variant.input_size]
    graph = helper.make_graph(
        g.nodes,
        variant.name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="dlaas",
        doc_string=f"{variant.title} (ImageNet-1k), batch norm folded; outputs logits.",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
