"""Who is calling: API keys, roles and the per-owner rate limit, for every route at once.

``AuthMiddleware`` wraps the whole app, so a route added later (by any router, or a
mounted app) is protected without asking. Only ``is_public`` paths are open. Each request
carries its owner as ``request.state.owner`` and its role as ``request.state.role``;
without a keys file every request is the owner ``anonymous`` with the admin role, as
a laptop install always was. No key, hash or Authorization header is ever logged.
"""

from __future__ import annotations

import math

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dlaas.keys import ANONYMOUS, KeyRing
from dlaas.web.security.tenancy import RateLimiter

PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/openapi.json", "/v1/whoami"})
PUBLIC_PREFIXES = ("/static/", "/docs/", "/v2/health/")
ADMIN_PATHS = frozenset({"/v1/stats", "/v1/stats/events", "/metrics"})


def _normal(path: str) -> str:
    return path.rstrip("/") or "/"


def is_public(path: str, method: str = "GET") -> bool:
    """Open without a key, to read only: the page, the docs, and health that says only
    ok/unavailable. (``POST /`` is an upload, so it needs a key.)"""
    if method not in ("GET", "HEAD"):
        return False
    return _normal(path) in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_admin_only(path: str) -> bool:
    """The admin routes, and the model repository's (index, load, unload)."""
    return _normal(path) in ADMIN_PATHS or path.startswith("/v2/repository/")


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class AuthMiddleware:
    """401 without a valid key, 403 for a user on admin routes, 429 over the rate."""

    def __init__(
        self, app: ASGIApp, keys: KeyRing | None, limiter: RateLimiter | None = None
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # behind a proxy's prefix, match what the routes match
        public = is_public(path, scope.get("method", "GET"))
        if self.keys is None:
            owner, role = ANONYMOUS, "admin"
        else:
            key = presented_key(scope["headers"])
            entry = self.keys.lookup(key) if key is not None else None
            if entry is None:
                owner, role = ANONYMOUS, None
                if not public:
                    await _refuse(scope, receive, send, *_unauthorized(key is not None))
                    return
            else:
                owner, role = entry.owner, entry.role
        if not public:
            if is_admin_only(path) and role != "admin":
                detail = "this route is for admin keys only (dlaas keys add OWNER --role admin)"
                await _refuse(scope, receive, send, 403, "forbidden", detail, {})
                return
            limiter = self.limiter
            wait_s = 0.0
            if limiter is not None:
                wait_s = (
                    await run_in_threadpool(limiter.take, owner)
                    if limiter.blocking
                    else limiter.take(owner)
                )
            if limiter is not None and wait_s > 0:
                detail = (
                    f"over your rate of {limiter.rate_per_s:g} requests/s; retry in {wait_s:.1f} s"
                )
                retry = {"Retry-After": str(max(1, math.ceil(wait_s)))}
                await _refuse(scope, receive, send, 429, "rate_limited", detail, retry)
                return
        state["owner"] = owner
        state["role"] = role
        await self.app(scope, receive, send)


def _unauthorized(presented: bool) -> tuple[int, str, str, dict[str, str]]:
    if presented:
        detail = "the API key is not valid (mistyped or revoked); ask the operator for one"
        challenge = 'Bearer realm="dlaas", error="invalid_token"'
    else:
        detail = "this route needs an API key: send Authorization: Bearer <key> or X-API-Key"
        challenge = 'Bearer realm="dlaas"'
    return 401, "unauthorized", detail, {"WWW-Authenticate": challenge}


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    error: str,
    detail: str,
    headers: dict[str, str],
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    response = JSONResponse({"error": error, "detail": detail}, status, headers=headers)
    await response(scope, receive, send)
