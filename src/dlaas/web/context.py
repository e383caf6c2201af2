"""What the routers share: one ``WebContext`` per app, kept on ``app.state.context``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from starlette.requests import Request

from dlaas.queue.base import Queue
from dlaas.settings import Settings
from dlaas.storage.base import Storage
from dlaas.web.ingest import JobService
from dlaas.web.metrics import Metrics
from dlaas.web.replies import ReplyHub
from dlaas.web.uploads import UploadReader


@dataclass
class WebContext:
    """The open backends and the per-process parts built around them by ``create_app``.

    ``stats_provider`` is the controller's ``stats`` (None: the queue's own numbers);
    ``workers_readiness`` the launcher's ``readiness`` (None: not checked).
    """

    settings: Settings
    storage: Storage
    queue: Queue
    hub: ReplyHub
    service: JobService
    metrics: Metrics
    uploads: UploadReader
    stats_provider: Callable[[], dict[str, Any]] | None = None
    workers_readiness: Callable[[], str] | None = None


def context(request: Request) -> WebContext:
    """The app's context; usable as a FastAPI dependency too."""
    return cast(WebContext, request.app.state.context)
