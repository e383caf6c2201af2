"""Image classification: EfficientNet-Lite0, -Lite1 and -Lite2 built offline from their
weights, run by ONNX Runtime.

``ensure_model`` converts a built-in model's weights once into its folder of a cache
directory, ``ensure_quantized_model`` derives the int8 Lite0 from Lite0's build;
``Classifier`` decodes images and scores batches. See docs/model.md.
"""

from dlaas.model.cache import ensure_model
from dlaas.model.custom import load_custom_model
from dlaas.model.quantize import INT8_NAME, ensure_quantized_model
from dlaas.model.spec import ModelSpec, Prediction, Preprocessing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dlaas.model.classifier import Classifier
    from dlaas.model.tiny import build_tiny_model


def __getattr__(name: str) -> object:
    """Imported only when asked: ``Classifier`` needs ONNX Runtime, which the web tier never
    runs (it would map ~30 MB into a process that classifies nothing), and
    ``build_tiny_model`` needs ``onnx``, which workers never need."""
    if name == "Classifier":
        from dlaas.model.classifier import Classifier

        return Classifier
    if name == "build_tiny_model":
        from dlaas.model.tiny import build_tiny_model

        return build_tiny_model
    raise AttributeError(f"module 'dlaas.model' has no attribute {name!r}")


__all__ = [
    "INT8_NAME",
    "Classifier",
    "ModelSpec",
    "Prediction",
    "Preprocessing",
    "build_tiny_model",
    "ensure_model",
    "ensure_quantized_model",
    "load_custom_model",
]
