"""dlaas: deep-learning image classification as a service that scales with demand."""

__version__ = "0.1.0"
