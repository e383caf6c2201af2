"""The EfficientNet-Lite family's shapes: Lite0's blocks, scaled by width, depth and resolution.

Pure arithmetic, no onnx: the graph builder (``efficientnet.py``) and the catalogue of
built-in models (``builtin.py``) both read it. The rules are TensorFlow's
``efficientnet_lite_builder.py`` as the reference package (``efficientnet-lite-pytorch``)
ports them, and the weights files confirm them tensor by tensor:

- channels are multiplied by the width and rounded to a multiple of 8, never more than
  10% down;
- repeats are multiplied by the depth and rounded up, except in the first and the last
  stage, which Lite keeps at one block;
- the stem (32 channels) and the head (1280) are never scaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class Stage:
    """A run of MBConv blocks: only the first one strides and changes the channel count."""

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


# efficientnet_lite_builder's block strings for width 1.0, depth 1.0 ("r1_k3_s11_e1_i32_o16", ...)
BASE_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest multiple of 8, at most 10% below it."""
    scaled = channels * width
    step = CHANNEL_DIVISOR
    rounded = max(step, int(scaled + step / 2) // step * step)
    if rounded < 0.9 * scaled:
        rounded += step
    return rounded


def scale_repeats(repeats: int, depth: float) -> int:
    return math.ceil(repeats * depth)


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family: its multipliers and the input resolution it was trained at."""

    name: str
    title: str
    width: float
    depth: float
    input_size: int

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The seven stages at this width and depth; the first takes the stem's 32 channels."""
        last = len(BASE_STAGES) - 1
        stages: list[Stage] = []
        for i, base in enumerate(BASE_STAGES):
            fixed = i in (0, last)
            stages.append(
                Stage(
                    repeats=base.repeats if fixed else scale_repeats(base.repeats, self.depth),
                    kernel=base.kernel,
                    stride=base.stride,
                    expand_ratio=base.expand_ratio,
                    in_channels=STEM_CHANNELS if i == 0 else stages[-1].out_channels,
                    out_channels=scale_channels(base.out_channels, self.width),
                )
            )
        return tuple(stages)


LITE0 = LiteVariant(
    "efficientnet-lite0", "EfficientNet-Lite0", width=1.0, depth=1.0, input_size=224
)
LITE1 = LiteVariant(
    "efficientnet-lite1", "EfficientNet-Lite1", width=1.0, depth=1.1, input_size=240
)
LITE2 = LiteVariant(
    "efficientnet-lite2", "EfficientNet-Lite2", width=1.1, depth=1.2, input_size=260
)
