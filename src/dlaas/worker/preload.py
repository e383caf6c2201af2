"""The model, loaded once in the local launcher's fork server, before any worker forks.

The fork server imports this module with ``DLAAS_FORKSERVER_PRELOAD=1`` and the workers'
``DLAAS_*`` settings in its environment. It builds the classifier and runs one forward
pass (the first is the slowest), so a worker forked from it starts with a warm session:
cold start drops from one session load to one ``fork``, and workers share the weights'
memory pages. ONNX Runtime with one intra-op thread has no thread pool to lose in the
fork. In any other process this module does nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dlaas.model import Classifier

log = logging.getLogger("dlaas.worker")

PRELOAD_ENV = "DLAAS_FORKSERVER_PRELOAD"


class Preloaded:
    """A warm classifier and what it was built from, to match against a worker's settings."""

    def __init__(self, onnx_path: Path, intra_op_threads: int, classifier: Classifier) -> None:
        self.onnx_path = onnx_path
        self.intra_op_threads = intra_op_threads
        self.classifier = classifier


PRELOADED: Preloaded | None = None


def _load() -> Preloaded | None:
    from dlaas.model import Classifier
    from dlaas.model.select import model_spec_from
    from dlaas.settings import load_settings

    settings = load_settings()
    spec = model_spec_from(settings)
    classifier = Classifier(spec, intra_op_num_threads=settings.intra_op_threads)
    warm_up = np.zeros(spec.preprocessing.input_shape(1), dtype=np.float32)
    classifier.predict(warm_up)  # warm up: the first run is slowest
    classifier.set_run_batch_size(settings.run_batch_size, settings.batch_size)
    return Preloaded(spec.onnx_path.resolve(), settings.intra_op_threads, classifier)


def classifier_for(onnx_path: Path, intra_op_threads: int) -> Classifier | None:
    """The preloaded classifier if this process was forked with one for this model."""
    if PRELOADED is None:
        return None
    if PRELOADED.onnx_path != onnx_path.resolve() or PRELOADED.intra_op_threads != intra_op_threads:
        return None
    return PRELOADED.classifier


if os.environ.get(PRELOAD_ENV) == "1":
    try:
        PRELOADED = _load()
    except Exception:  # the workers then load the model themselves, as usual
        log.exception("model_preload_failed")
