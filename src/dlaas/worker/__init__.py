"""The app tier: receive a batch, classify it in one forward pass, settle every message."""

from dlaas.worker.loop import Worker
from dlaas.worker.options import WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
