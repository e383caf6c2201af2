"""What the routers share: one ``WebContext`` per app, the only thing on ``app.state``.

``dlaas.assemble.build_app`` builds every part from the settings; routes reach it through
the ``web_context`` dependency, so a route names what it uses in its signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends
from starlette.requests import Request

from dlaas.jobs.idempotency import IdempotencyStore
from dlaas.jobs.listing import SourceJobs
from dlaas.jobs.sources import AllowedRoot
from dlaas.jobs.store import JobStore
from dlaas.keys import ANONYMOUS, KeyRing
from dlaas.lifecycle.webhooks import WebhookDispatcher
from dlaas.model.index import ModelIndex
from dlaas.settings import Settings
from dlaas.web.ingest import Ingest
from dlaas.web.metrics import Metrics
from dlaas.web.replies import ReplyHub
from dlaas.web.security.tenancy import RateLimiter
from dlaas.web.uploads import UploadReader


@dataclass
class WebContext:
    """The open backends and the per-process parts built around them.

    ``stats_provider`` is the controller's ``stats`` (None: the queue's own numbers);
    ``workers_readiness`` the launcher's ``readiness`` (None: not checked);
    ``allow_hosts`` the webhook hosts (empty: webhooks off, ``dispatcher`` None);
    ``source_jobs`` runs the jobs over stored images, under ``source_roots``.
    """

    settings: Settings
    jobs: JobStore
    ingest: Ingest
    hub: ReplyHub
    metrics: Metrics
    uploads: UploadReader
    idempotency: IdempotencyStore
    models: ModelIndex
    keys: KeyRing | None = None
    limiter: RateLimiter | None = None
    allow_hosts: tuple[str, ...] = ()
    dispatcher: WebhookDispatcher | None = None
    stats_provider: Callable[[], dict[str, Any]] | None = None
    workers_readiness: Callable[[], str] | None = None
    source_roots: tuple[AllowedRoot, ...] = ()  # --source-allow; empty: no jobs over sources
    source_jobs: SourceJobs | None = None


async def web_context(request: Request) -> WebContext:
    """The app's context, as a FastAPI dependency (async: it runs on the event loop)."""
    return cast(WebContext, request.app.state.context)


Context = Annotated[WebContext, Depends(web_context)]
"""A route's parameter ``ctx: Context`` is the app's ``WebContext``."""


def owner(request: Request) -> str:
    """The authenticated owner (the security layer sets it); ``anonymous`` without keys."""
    return str(getattr(request.state, "owner", ANONYMOUS) or ANONYMOUS)
