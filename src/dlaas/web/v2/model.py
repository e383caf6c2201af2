"""The served models as the web tier knows them: the repository index, from the same
settings as the workers."""

from __future__ import annotations

from dlaas.model.index import ModelIndex, ModelState, VersionState
from dlaas.model.select import default_model_name, preprocessing_from
from dlaas.model.spec import ModelSpec
from dlaas.settings import Settings


def model_index_from(settings: Settings) -> ModelIndex:
    """The user's one ``--model FILE``, or every model of the repository (``--model-dir``)
    with the default (``--model NAME``, else EfficientNet-Lite0) first. A built-in default
    that is not built yet is listed anyway: the workers build it, as before repositories."""
    from dlaas.model.labels import imagenet_labels, read_labels

    if settings.model_path is not None and settings.labels is not None:
        preprocessing = preprocessing_from(settings)
        spec = ModelSpec(
            settings.model_path.stem,
            settings.model_path,
            read_labels(settings.labels),
            preprocessing,
        )
        return ModelIndex(None, spec.name, single=spec)
    default = default_model_name(settings)
    index = ModelIndex(settings.model_cache_dir, default)
    index.scan_all()
    if default not in {m.name for m in index.models()}:
        from dlaas.model.builtin import FP32_MODELS, LITE0_MODEL

        builtin = FP32_MODELS.get(default, LITE0_MODEL)
        index.add_own(
            ModelState(
                default, imagenet_labels(), builtin.preprocessing, in_repository=False,
                versions={1: VersionState("READY")},
            )
        )  # fmt: skip
    return index
