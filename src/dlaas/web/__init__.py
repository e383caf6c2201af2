"""The web tier: HTTP API, upload page, result delivery."""

from dlaas.web.app import create_app

__all__ = ["create_app"]
