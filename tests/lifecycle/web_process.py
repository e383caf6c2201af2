"""A web process on its own (no controller, no workers) that can crash on purpose.

``python -m tests.lifecycle.web_process PORT CRASH`` serves the app on 127.0.0.1:PORT
with the backends named by ``DLAAS_*``; CRASH is where the process dies with
``os._exit`` (as a SIGKILL would, no clean-up) while handling ``POST /v1/jobs``:

- ``none``: never;
- ``before_enqueue``: the job and its Idempotency-Key record are stored, nothing is sent;
- ``before_answer``: the job is stored, enqueued and its record marked; no answer is sent.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from dlaas.assemble import build_app, open_queue_from, open_storage_from
from dlaas.jobs.idempotency import IdempotencyStore
from dlaas.settings import load_settings


def main(argv: Sequence[str]) -> None:
    port, crash = int(argv[0]), argv[1]
    settings = load_settings()
    storage = open_storage_from(settings)
    queue = open_queue_from(settings)
    if crash == "before_enqueue":

        def send_batch(_bodies: Sequence[str]) -> list[str]:
            os._exit(17)

        queue.send_batch = send_batch  # type: ignore[method-assign]
    elif crash == "before_answer":
        original = IdempotencyStore.mark_enqueued

        def mark_enqueued(self: IdempotencyStore, *args: Any) -> None:
            original(self, *args)
            os._exit(17)

        IdempotencyStore.mark_enqueued = mark_enqueued  # type: ignore[method-assign]
    app = build_app(settings, storage, queue)
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
