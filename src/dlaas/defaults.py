"""Defaults shared by several layers, each in one place (the settings, the policy, the
simulator), kept here so that low layers need not import high ones to agree on them."""

from __future__ import annotations

import os

# Most messages a worker takes at once: received, stored, replied and deleted together.
# The forward pass inside it runs in 1 or 8 images, whichever the CPU does cheaper per
# image (timed when the model loads; ``run_batch_size``). ONNX Runtime's arena keeps the
# activations of the largest batch it has run: 16 held ~95 MB more per worker than 8.
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
