"""The models a worker runs: its own, plus repository versions loaded on first demand.

A task names its model and version (``Task.model``, ``Task.version``). The worker's own
model, the one its fork server preloaded, answers every task that names it; another
version (a new one being warmed, or an old one draining) is loaded when a task first
needs it, and the least recently used is dropped past ``capacity``, so an old version
is unloaded once the new one has taken its traffic.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from dlaas.errors import ModelError, ModelNotFound
from dlaas.model.repository import Entry, find_entry
from dlaas.model.spec import ModelSpec
from dlaas.settings import Settings
from dlaas.worker.outcome import SupportsClassify

log = logging.getLogger("dlaas.worker")


class ModelShelf:
    """``get(model, version)``: the classifier for a task; ModelError if it cannot load.

    ``locate(model, version)`` says where the version's file is, with a classifier
    built for it unless the caller should reuse its own (``None`` asks for the check
    against ``own_path``); a version that is the worker's own file runs on ``own``.
    """

    def __init__(
        self,
        own: SupportsClassify,
        own_path: Path | None,
        locate: Callable[[str, int], Path] | None = None,
        build: Callable[[str, int], SupportsClassify] | None = None,
        capacity: int = 2,
    ) -> None:
        self.own, self.own_path = own, own_path
        self._locate, self._build = locate, build
        self.capacity = capacity
        self._held: OrderedDict[tuple[str, int], SupportsClassify] = OrderedDict()

    def get(self, model: str | None, version: int | None) -> SupportsClassify:
        if model is None or version is None:
            return self.own
        if self._locate is None and model == self.own.name:
            return self.own  # a worker without a repository runs its one model
        key = (model, version)
        held = self._held.get(key)
        if held is not None:
            self._held.move_to_end(key)
            return held
        if self._locate is None or self._build is None:
            raise ModelError(
                f"this worker serves its own model only, not {model} version {version}"
            )
        path = self._locate(model, version)
        if model == self.own.name and self.own_path is not None and _same(path, self.own_path):
            classifier = self.own
        else:
            started = time.monotonic()
            classifier = self._build(model, version)
            log.info(
                "model_loaded",
                extra={
                    "model": model,
                    "version": version,
                    "ms": round((time.monotonic() - started) * 1000),
                },
            )
        self._held[key] = classifier
        while len(self._held) > self.capacity:
            (gone, gone_version), _ = self._held.popitem(last=False)
            log.info("model_unloaded", extra={"model": gone, "version": gone_version})
        return classifier


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def repository_shelf(settings: Settings, spec: ModelSpec, own: SupportsClassify) -> ModelShelf:
    """A worker's models: its own (``spec``), and the repository's versions tasks name,
    each cut to its config's ``max_batch_size`` per forward pass."""
    from dlaas.model import Classifier

    root = settings.model_cache_dir

    def entry(name: str, version: int) -> Entry:
        found = find_entry(root, name)
        if found is None or version not in found.versions:
            raise ModelNotFound(f"{root} has no model {name} version {version}")
        return found

    def build(name: str, version: int) -> SupportsClassify:
        found = entry(name, version)
        classifier = Classifier(
            found.runtime_spec(version), intra_op_num_threads=settings.intra_op_threads
        )
        most = found.config.max_batch_size
        classifier.set_run_batch_size(settings.run_batch_size, min(settings.batch_size, most))
        if not 0 < classifier.run_batch_size <= most:
            classifier.run_batch_size = most
        return classifier

    own_path = None if settings.model_path is not None else spec.onnx_path
    return ModelShelf(own, own_path, lambda n, v: entry(n, v).onnx_path(v), build)
