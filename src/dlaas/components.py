"""Build the configured backends and model from Settings, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlaas.settings import Settings

if TYPE_CHECKING:
    from dlaas.model import ModelSpec
    from dlaas.queue.base import Queue
    from dlaas.storage.base import Storage


def open_storage_from(settings: Settings) -> Storage:
    from dlaas.storage import open_storage

    return open_storage(settings.storage_url, **settings.storage_options())


def open_queue_from(settings: Settings) -> Queue:
    from dlaas.queue import open_queue

    return open_queue(settings.queue_url, name=settings.queue_name, **settings.queue_options())


def model_spec_from(settings: Settings) -> ModelSpec:
    """The user's own model if ``--model`` is set, else EfficientNet-Lite0 (built once)."""
    from dlaas.model import Preprocessing, ensure_model, load_custom_model

    if settings.model is not None and settings.labels is not None:
        mean = tuple(float(x) for x in settings.mean.split(","))
        std = tuple(float(x) for x in settings.std.split(","))
        preprocessing = Preprocessing(
            input_size=settings.input_size,
            resize_size=settings.resize_size,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            layout=settings.layout,
        )
        return load_custom_model(settings.model, settings.labels, preprocessing)
    return ensure_model(settings.model_cache_dir)
