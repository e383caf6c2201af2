"""The ONNX graph builder: padding rule, batch-norm folding, the Lite family's scaling rules
checked against the weights files, and each graph's shape."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from dlaas.errors import ModelError
from dlaas.model import efficientnet
from dlaas.model.builtin import FP32_MODELS
from dlaas.model.cache import weights_path
from dlaas.model.efficientnet import _GraphBuilder, build_efficientnet_lite, same_padding
from dlaas.model.lite import LITE0, LITE1, LITE2, LiteVariant, scale_channels, scale_repeats
from dlaas.model.torchfile import load_legacy_state_dict


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1, 112)),  # stem: TF puts the odd pixel at the end
        (112, 3, 1, (1, 1, 112)),
        (56, 5, 2, (1, 2, 28)),
        (14, 5, 1, (2, 2, 14)),
        (7, 1, 1, (0, 0, 7)),
        (7, 3, 2, (1, 1, 4)),  # odd input: out = ceil(7 / 2)
        (240, 3, 2, (0, 1, 120)),  # Lite1's stem
        (65, 3, 2, (1, 1, 33)),  # Lite2: 260 -> 130 -> 65, then a stride-2 block
    ],
)
def test_same_padding_matches_tensorflow(
    size: int, kernel: int, stride: int, expected: tuple[int, int, int]
) -> None:
    assert same_padding(size, kernel, stride) == expected


def _run(nodes_from: _GraphBuilder, x_name: str, y_name: str, x: np.ndarray) -> np.ndarray:
    graph = helper.make_graph(
        nodes_from.nodes,
        "t",
        [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)],
        initializer=nodes_from.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", efficientnet.OPSET)])
    model.ir_version = efficientnet.IR_VERSION
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {x_name: x})
    return np.asarray(y)


def test_batch_norm_is_folded_into_the_convolution_exactly() -> None:
    # given a 1x1 convolution followed by batch norm with non-trivial statistics
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 4), rng.normal(size=4)
    mean, var = rng.normal(size=4), np.array([0.0, 0.5, 1.0, 4.0])  # 0: a dead channel
    weights = {
        "c.weight": w,
        "bn.weight": gamma.astype(np.float32),
        "bn.bias": beta.astype(np.float32),
        "bn.running_mean": mean.astype(np.float32),
        "bn.running_var": var.astype(np.float32),
    }
    x = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)

    g = _GraphBuilder(weights)
    y_name, out = g.conv_bn(
        "x", "c", "bn", in_channels=3, out_channels=4, kernel=1, stride=1, size=5, relu6=False
    )
    folded = _run(g, "x", y_name, x)

    conv = np.einsum("oi,bihw->bohw", w[:, :, 0, 0].astype(np.float64), x)
    expected = (conv - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3)
    expected = expected * gamma[:, None, None] + beta[:, None, None]
    assert out == 5
    np.testing.assert_allclose(folded, expected, atol=1e-5)


@pytest.fixture(scope="module")
def lite0_weights() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(weights_path())


def test_lite0_graph_has_a_dynamic_batch_and_folded_batch_norm(
    lite0_weights: dict[str, np.ndarray],
) -> None:
    model = build_efficientnet_lite(lite0_weights)

    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224]
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == 1 + 16 * 3 - 1 + 1  # stem, blocks (block 0 has no expand), head
    assert ops.count("Add") == 16 - 7  # a residual in every block that repeats its stage
    assert model.opset_import[0].version == efficientnet.OPSET
    onnx.checker.check_model(model, full_check=True)


def test_missing_or_extra_tensors_are_refused(lite0_weights: dict[str, np.ndarray]) -> None:
    missing = {k: v for k, v in lite0_weights.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ModelError, match=r"lacks _blocks\.3\._bn1\.running_var"):
        build_efficientnet_lite(missing)

    extra = {**lite0_weights, "_blocks.3._se_reduce.weight": np.zeros((1, 1), np.float32)}
    with pytest.raises(ModelError, match=r"does not use: _blocks\.3\._se_reduce\.weight"):
        build_efficientnet_lite(extra)

    reshaped = {**lite0_weights, "_fc.weight": np.zeros((10, 1280), np.float32)}
    with pytest.raises(ModelError, match=r"_fc\.weight has shape \(10, 1280\)"):
        build_efficientnet_lite(reshaped)


@pytest.mark.parametrize(
    ("channels", "width", "expected"),
    [(16, 1.1, 16), (40, 1.1, 48), (80, 1.1, 88), (112, 1.1, 120), (320, 1.1, 352), (24, 1.0, 24)],
)
def test_channels_scale_to_multiples_of_8(channels: int, width: float, expected: int) -> None:
    assert scale_channels(channels, width) == expected


def test_repeats_round_up() -> None:
    assert [scale_repeats(r, 1.1) for r in (2, 3, 4)] == [3, 4, 5]
    assert [scale_repeats(r, 1.2) for r in (2, 3, 4)] == [3, 4, 5]
    assert [scale_repeats(r, 1.0) for r in (2, 3, 4)] == [2, 3, 4]


def _blocks_in(weights: dict[str, np.ndarray]) -> list[tuple[int, int, int]]:
    """(kernel, hidden channels, output channels) of each block, as the weights file has them."""
    count = len({k.split(".")[1] for k in weights if k.startswith("_blocks.")})
    out = []
    for i in range(count):
        depthwise = weights[f"_blocks.{i}._depthwise_conv.weight"].shape
        project = weights[f"_blocks.{i}._project_conv.weight"].shape
        out.append((depthwise[2], depthwise[0], project[0]))
    return out


def _blocks_of(variant: LiteVariant) -> list[tuple[int, int, int]]:
    out = []
    for stage in variant.stages:
        for repeat in range(stage.repeats):
            in_channels = stage.in_channels if repeat == 0 else stage.out_channels
            out.append((stage.kernel, in_channels * stage.expand_ratio, stage.out_channels))
    return out


@pytest.mark.parametrize("variant", [LITE0, LITE1, LITE2], ids=lambda v: v.name)
def test_the_scaled_blocks_are_those_of_the_weights_file(variant: LiteVariant) -> None:
    weights = load_legacy_state_dict(weights_path(variant.name))

    assert _blocks_of(variant) == _blocks_in(weights)
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)  # Lite never scales the stem
    assert weights["_conv_head.weight"].shape[0] == 1280  # nor the head


@pytest.mark.parametrize(
    ("variant", "blocks"), [(LITE1, 21), (LITE2, 21)], ids=lambda v: getattr(v, "name", v)
)
def test_lite1_and_lite2_graphs_run_at_their_own_resolution(
    variant: LiteVariant, blocks: int
) -> None:
    model = build_efficientnet_lite(load_legacy_state_dict(weights_path(variant.name)), variant)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    (inp,) = session.get_inputs()
    assert inp.shape == ["batch", 3, variant.input_size, variant.input_size]
    assert session.get_outputs()[0].shape == ["batch", 1000]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 1 + blocks * 3 - 1 + 1
    x = np.zeros((2, 3, variant.input_size, variant.input_size), np.float32)
    (logits,) = session.run(None, {"input": x})
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()
    with pytest.raises(InvalidArgument, match=r"(?i)dimension"):  # another resolution is refused
        session.run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)})


def test_weights_of_another_variant_are_refused() -> None:
    with pytest.raises(ModelError, match=r"has shape .* for EfficientNet-Lite2"):
        build_efficientnet_lite(load_legacy_state_dict(weights_path(LITE1.name)), LITE2)


def test_every_variant_has_a_weights_package() -> None:
    assert {v.name for v in (LITE0, LITE1, LITE2)} == set(FP32_MODELS)
