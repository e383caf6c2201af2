"""Autoscaling: a pure policy, the controller that applies it, and launchers.

The simulator (``dlaas.scaling.simulate``) drives this same code on a simulated clock.
"""

from dlaas.scaling.controller import Controller, Decision
from dlaas.scaling.policy import PolicyConfig, PolicyState, Snapshot, decide

__all__ = ["Controller", "Decision", "PolicyConfig", "PolicyState", "Snapshot", "decide"]
