"""What a model is to the rest of dlaas: a file, its labels and how to prepare its input."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from dlaas.errors import ConfigError

Layout = Literal["NCHW", "NHWC"]


class Prediction(TypedDict):
    """One of the top-k classes for an image, with its softmax score: the model's answer
    and, unchanged, an entry of a result record's ``predictions``."""

    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes model input; the defaults are EfficientNet-Lite0's own.

    The short side is resized to ``resize_size``, a centred ``input_size`` square is cut,
    and each RGB channel becomes ``(pixel - mean) / std`` on the 0..255 scale.
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    layout: Layout = "NCHW"

    def __post_init__(self) -> None:
        if self.input_size < 1 or self.resize_size < 1:
            raise ConfigError(
                f"preprocessing sizes must be positive, got input_size={self.input_size} "
                f"and resize_size={self.resize_size}"
            )
        if self.resize_size < self.input_size:
            raise ConfigError(
                f"resize_size ({self.resize_size}) must be at least input_size "
                f"({self.input_size}): the crop is cut from the resized image"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std need exactly three values, one per RGB channel")
        if not all(math.isfinite(m) for m in self.mean):
            raise ConfigError(f"mean must be finite numbers, got {self.mean}")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(f"std must be positive numbers, got {self.std}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"layout must be NCHW or NHWC, got {self.layout!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        mean, std = data["mean"], data["std"]
        return cls(
            input_size=int(data["input_size"]),
            resize_size=int(data["resize_size"]),
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            layout=data["layout"],
        )

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        """The array shape a batch of ``batch`` prepared images has in this layout."""
        size = self.input_size
        if self.layout == "NCHW":
            return (batch, 3, size, size)
        return (batch, size, size, 3)


@dataclass(frozen=True)
class ModelSpec:
    """An ONNX classifier on disk: one output score per label, in label order."""

    name: str
    onnx_path: Path
    labels: tuple[str, ...]
    preprocessing: Preprocessing
