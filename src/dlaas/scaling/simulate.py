"""``dlaas simulate``, kept importable here: the simulator lives in ``dlaas.scaling.sim``."""

from __future__ import annotations

from dlaas.scaling.sim.cli import build_parser, main, params_from_args
from dlaas.scaling.sim.engine import simulate, simulate_mode
from dlaas.scaling.sim.params import PRESETS, SimParams, local_preset, seed_preset
from dlaas.scaling.sim.queue import SimQueue
from dlaas.scaling.sim.report import SEED_MINUTES, ModeReport, RunReport, format_table

__all__ = [
    "PRESETS",
    "SEED_MINUTES",
    "ModeReport",
    "RunReport",
    "SimParams",
    "SimQueue",
    "build_parser",
    "format_table",
    "local_preset",
    "main",
    "params_from_args",
    "seed_preset",
    "simulate",
    "simulate_mode",
]
