"""Who may call what: API keys and roles (``auth``), per-owner limits (``tenancy``),
strict browser headers (``headers``), and ``install``, which wires them into the app."""

from __future__ import annotations

import ipaddress
import logging

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from dlaas.errors import ConfigError
from dlaas.keys import KeyRing
from dlaas.settings import Settings
from dlaas.web.security.auth import AuthMiddleware
from dlaas.web.security.headers import SecurityHeadersMiddleware
from dlaas.web.security.tenancy import RateLimiter

log = logging.getLogger("dlaas.web")


def open_keyring(settings: Settings) -> KeyRing | None:
    """The keys of ``--api-keys-file``, followed as the file changes; None without one."""
    if settings.api_keys_file is None:
        return None

    def reloaded(count: int) -> None:
        log.info("api_keys_loaded", extra={"keys": count, "file": str(settings.api_keys_file)})

    def failed(exc: ConfigError) -> None:
        log.error("api_keys_reload_failed", extra={"error": str(exc), "kept": "previous keys"})

    return KeyRing(settings.api_keys_file, on_reload=reloaded, on_error=failed)


def install(
    app: FastAPI, settings: Settings, keys: KeyRing | None, limiter: RateLimiter | None
) -> None:
    """Add the middleware: headers outermost, then CORS, then auth, so that refusals
    carry the headers too and CORS preflights need no key."""
    app.add_middleware(AuthMiddleware, keys=keys, limiter=limiter)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond this machine with no keys, unless told to accept the risk."""
    if is_loopback(settings.host) or settings.api_keys_file is not None:
        return
    if not settings.allow_anonymous:
        raise ConfigError(
            f"refusing to listen on {settings.host} without API keys: pass --api-keys-file, or"
            " --allow-anonymous to accept the risk"
        )
    log.warning(
        "anonymous_access",
        extra={
            "host": settings.host,
            "detail": "anyone who can reach this port can upload and read every job",
        },
    )
