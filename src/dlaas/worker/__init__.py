"""The app tier: receive a batch, classify it in one forward pass, store results, delete."""

from dlaas.worker.loop import Worker

__all__ = ["Worker"]
