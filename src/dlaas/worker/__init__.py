"""The app tier: receive a batch, classify it in one forward pass, store results, delete."""

from dlaas.worker.loop import Worker, run_worker

__all__ = ["Worker", "run_worker"]
