"""Defaults shared by several layers, each in one place (the settings, the policy, the
simulator), kept here so that low layers need not import high ones to agree on them."""

from __future__ import annotations

# Most images per forward pass. ONNX Runtime's cost per image is the same from 1 to 32
# on a CPU, but its arena keeps the activations of the largest batch it has run: 16
# held ~95 MB more per worker than 8 (PSS), for no speed.
BATCH_SIZE = 8

# Messages (waiting or in a batch) per worker before the policy adds another. Two keep a
# worker busy: one in hand, one next. The earlier 4 x batch size left a steady load of
# one-image requests on one worker while the other cores idled. Ray Serve's default
# target of ongoing requests per replica is also 2.
TARGET_BACKLOG_PER_WORKER = 2
