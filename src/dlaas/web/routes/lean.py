"""A route whose endpoint takes the bare request: for the hot synchronous calls.

FastAPI's own handler solves the signature's dependencies and validates each parameter
through pydantic on every request. On ``/v1/classify`` that was ~0.1 ms of the web tier's
~2 ms of CPU per image (measured, docs/performance.md). A ``LeanRoute``'s endpoint takes
``request`` alone and reads its few parameters itself (``query_number``); the OpenAPI
schema still comes from the route's declaration, with the parameters documented through
``openapi_extra`` (``parameter_doc``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any, cast

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from dlaas.errors import WebError
from dlaas.web.context import WebContext

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class LeanRoute(APIRoute):
    """An ``APIRoute`` that calls ``endpoint(request)`` and nothing else."""

    def get_route_handler(self) -> Endpoint:
        return cast(Endpoint, self.endpoint)


def context_of(request: Request) -> WebContext:
    """The app's ``WebContext`` (what the ``Context`` dependency gives other routes)."""
    return cast(WebContext, request.app.state.context)


def query_number(
    request: Request, name: str, default: float, *, above: float, most: float
) -> float:
    """The query parameter ``name`` as a number in (``above``, ``most``]; 422 otherwise,
    in the shape of the app's other refusals of a parameter."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not above < value <= most:  # NaN fails too
        raise WebError(
            422,
            "bad_request",
            f"query.{name}: must be a number greater than {above:g} and at most {most:g}; "
            f"got {raw[:40]!r}",
        )
    return value


def query_text(request: Request, name: str) -> str | None:
    """The query parameter ``name``; None when absent or empty."""
    return request.query_params.get(name) or None
