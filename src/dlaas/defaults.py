"""Defaults shared by several layers, each in one place (the settings, the policy, the
simulator), kept here so that low layers need not import high ones to agree on them."""

from __future__ import annotations

import os

# Most images per forward pass. ONNX Runtime's cost per image is the same from 1 to 32
# on a CPU, but its arena keeps the activations of the largest batch it has run: 16
# held ~95 MB more per worker than 8 (PSS), for no speed.
BATCH_SIZE = 8

# Messages (waiting or in a batch) per worker before the policy adds another. Two keep a
# worker busy: one in hand, one next. The earlier 4 x batch size left a steady load of
# one-image requests on one worker while the other cores idled. Ray Serve's default
# target of ongoing requests per replica is also 2.
TARGET_BACKLOG_PER_WORKER = 2

# The input queue's name when the URL names none.
QUEUE_NAME = "dlaas-input"

# Deliveries of one message before it goes to the dead-letter queue: a poison image
# that kills its worker is retried this often, then parked.
MAX_RECEIVES = 5


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
