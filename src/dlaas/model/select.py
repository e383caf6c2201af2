"""Which model a configuration names: the user's own file, or a built-in one (built once).

It lives with the model, not with the service builder (``dlaas.assemble``), because the
fork server's preload needs it too, below the tiers.
"""

from __future__ import annotations

from dlaas.errors import ModelError
from dlaas.model.builtin import FP32_MODELS
from dlaas.model.cache import MODEL_NAME, ensure_model
from dlaas.model.custom import load_custom_model
from dlaas.model.quantize import INT8_NAME, ensure_quantized_model
from dlaas.model.repository import find_entry, publish_builtin
from dlaas.model.spec import ModelSpec, Preprocessing
from dlaas.settings import Settings


def preprocessing_from(settings: Settings) -> Preprocessing:
    """The preprocessing flags of a user's own ``--model`` file."""
    return Preprocessing(
        input_size=settings.input_size,
        resize_size=settings.resize_size,
        mean=settings.mean,
        std=settings.std,
        layout=settings.layout,
    )


def model_spec_from(settings: Settings, *, force: bool = False) -> ModelSpec:
    """The user's own model if ``--model`` names a file, else the built-in one it names
    (EfficientNet-Lite0 by default), built once into its own folder of the model cache, or
    again if ``force``."""
    if settings.model_path is not None and settings.labels is not None:
        return load_custom_model(settings.model_path, settings.labels, preprocessing_from(settings))
    name = settings.builtin_model or MODEL_NAME
    if name not in FP32_MODELS and name != INT8_NAME:  # a folder of the repository
        entry = find_entry(settings.model_cache_dir, name)
        if entry is None or not entry.versions:
            raise ModelError(f"model {name} in {settings.model_cache_dir} has no version folder")
        return entry.runtime_spec(entry.versions[-1])
    if name == INT8_NAME:
        spec = ensure_quantized_model(
            settings.model_cache_dir, calibration_dir=settings.calibration_dir, force=force
        )
    else:
        spec = ensure_model(settings.model_cache_dir, name, force=force)
    publish_builtin(spec, settings.model_cache_dir / name)
    return spec


def default_model_name(settings: Settings) -> str:
    """The model a request that names none gets: ``--model`` (a file's stem) or Lite0."""
    if settings.model_path is not None:
        return settings.model_path.stem
    return settings.model or MODEL_NAME
