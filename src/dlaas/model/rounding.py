"""Int8 weights for convolutions: GPTQ rounding, and scales x86 kernels cannot overflow.

Round-to-nearest int8 weights cost EfficientNet-Lite0 more accuracy than its int8
activations do. Rounding an output channel's weights one at a time, each time pushing the
error onto the weights not yet rounded so that it cancels on the layer's real inputs
(GPTQ, Frantar et al. 2022), keeps the layer's outputs, not its weights, close.

ONNX Runtime's int8 convolutions on x86 CPUs without VNNI multiply uint8 activations by
int8 weights with ``vpmaddubsw``, which adds two neighbouring products into a saturating
int16: neighbouring input channels whose weights sum above 128 in magnitude overflow on
bright inputs. Every such pair is capped, so the fast kernel stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from dlaas.errors import ModelError

QMAX = 127  # symmetric int8: -127..127, zero point 0
PAIR_LIMIT = 128  # 255 * (|w0| + |w1|) must stay below 32767 (int16)
DAMPING = 0.01  # fraction of the mean input energy added to the diagonal; GPTQ's default


def is_depthwise(node: onnx.NodeProto) -> bool:
    return any(a.name == "group" and a.i > 1 for a in node.attribute)


def pair_safe_scale(weights: np.ndarray, *, pair_limit: int | None) -> np.ndarray:
    """Per-row scale: max |w| maps to 127, and no neighbouring pair exceeds ``pair_limit``."""
    magnitude = np.abs(weights.astype(np.float64))
    scale = magnitude.max(axis=1) / QMAX
    if pair_limit is not None:
        pairs = magnitude[:, 0::2] + magnitude[:, 1::2]
        scale = np.maximum(scale, pairs.max(axis=1) / pair_limit)
    scale[scale == 0] = 1.0  # an all-zero row: any scale represents it exactly
    result: np.ndarray = scale
    return result


def round_weights(
    weights: np.ndarray,
    moments: np.ndarray,
    scale: np.ndarray,
    *,
    pair_limit: int | None,
    damping: float = DAMPING,
) -> np.ndarray:
    """Integer weights for ``weights`` (rows, d) on ``scale``'s grid, rows quantized alike.

    ``moments`` is E[x xᵀ] of the inputs, (d, d) shared by all rows or (rows, d, d) one per
    row (depthwise: each channel sees its own input). Columns are visited in order; with
    ``pair_limit`` the second of each pair is capped by what the first one used.
    """
    w = weights.astype(np.float64).copy()
    rows, d = w.shape
    upper = _inverse_cholesky(moments, damping)
    shared = upper.ndim == 2
    q = np.zeros_like(w)
    for i in range(d):
        limit = np.full(rows, float(QMAX))
        if pair_limit is not None and i % 2 == 1:
            limit = np.minimum(limit, pair_limit - np.abs(q[:, i - 1]))
        q[:, i] = np.clip(np.rint(w[:, i] / scale), -limit, limit)
        if shared:
            error = (w[:, i] - q[:, i] * scale) / upper[i, i]
            w[:, i + 1 :] -= np.outer(error, upper[i, i + 1 :])
        else:
            error = (w[:, i] - q[:, i] * scale) / upper[:, i, i]
            w[:, i + 1 :] -= error[:, None] * upper[:, i, i + 1 :]
    return q


def _inverse_cholesky(moments: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse of ``moments`` (one, or one per row)."""
    m = np.array(moments, dtype=np.float64)
    d = m.shape[-1]
    diagonal = np.diagonal(m, axis1=-2, axis2=-1)
    dead = diagonal == 0  # an input that is always zero: its weight does not matter
    m[..., np.arange(d), np.arange(d)] += np.where(dead, 1.0, 0.0)
    mean = np.diagonal(m, axis1=-2, axis2=-1).mean(axis=-1)
    m[..., np.arange(d), np.arange(d)] += damping * mean[..., None]
    inverse = np.linalg.inv(m)
    factor: np.ndarray = np.swapaxes(np.linalg.cholesky(inverse), -1, -2)
    return factor


def input_moments(
    model: onnx.ModelProto,
    batches: Iterable[np.ndarray],
    convs: Sequence[onnx.NodeProto],
    *,
    positions: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """E[x xᵀ] of each conv's input (pointwise) or of each channel's patches (depthwise).

    Runs the fp32 model once per batch with the convs' inputs as extra outputs, and samples
    ``positions`` output pixels per image: enough for a good estimate, far cheaper than all.
    """
    for node in convs:
        if not is_depthwise(node) and _attr(node, "kernel_shape") != [1, 1]:
            raise ModelError(f"{node.name}: only pointwise and depthwise convs can be rounded")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = sorted({node.input[0] for node in convs} - {i.name for i in model.graph.input})
    for name in wanted:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in batches:
        values = dict(zip(output_names, session.run(None, {input_name: batch}), strict=True))
        values[input_name] = batch
        for node in convs:
            patches = _sample_patches(values[node.input[0]], node, positions, rng)
            if is_depthwise(node):  # one k*k moment per channel
                moment = np.matmul(patches, patches.transpose(0, 2, 1))
            else:  # one channels x channels moment
                flat = patches[:, 0, :]
                moment = flat @ flat.T
            sums[node.name] = sums.get(node.name, 0) + moment.astype(np.float64)
            counts[node.name] = counts.get(node.name, 0) + patches.shape[-1]
    return {name: total / counts[name] for name, total in sums.items()}


def _sample_patches(
    x: np.ndarray, node: onnx.NodeProto, positions: int, rng: np.random.Generator
) -> np.ndarray:
    """The conv's input windows at ``positions`` random output pixels per image, as
    (channels, k*k, samples), the k*k taps in the weights' row-major order."""
    kernel = _attr(node, "kernel_shape")[0]
    stride = (_attr(node, "strides") or [1, 1])[0]
    top, left, bottom, right = _attr(node, "pads") or [0, 0, 0, 0]
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    count, channels, height, width = x.shape
    out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    take = min(positions, out_h * out_w)
    patches = np.empty((channels, kernel * kernel, count * take), dtype=x.dtype)
    for n, image in enumerate(x):  # (channels, height, width)
        picks = rng.choice(out_h * out_w, size=take, replace=False)
        ys, xs = (picks // out_w) * stride, (picks % out_w) * stride
        for tap in range(kernel * kernel):
            dy, dx = divmod(tap, kernel)
            patches[:, tap, n * take : (n + 1) * take] = image[:, ys + dy, xs + dx]
    return patches


def _attr(node: onnx.NodeProto, name: str) -> list[int]:
    for attribute in node.attribute:
        if attribute.name == name:
            return list(attribute.ints)
    return []
