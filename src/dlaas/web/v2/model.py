"""The model as ``/v2`` names it: its name and labels, from the same settings as workers."""

from __future__ import annotations

from dataclasses import dataclass

from dlaas.settings import Settings


@dataclass(frozen=True)
class ServedModel:
    name: str
    labels: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> ServedModel:
        from dlaas.model.labels import imagenet_labels, read_labels

        if settings.model_path is not None and settings.labels is not None:
            return cls(settings.model_path.stem, read_labels(settings.labels))
        return cls(settings.builtin_model or "efficientnet-lite0", imagenet_labels())
