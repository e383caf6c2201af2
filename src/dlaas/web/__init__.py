"""The web tier: HTTP API, upload page, result delivery.

Top level: the app (``app``), what its routes share (``context``), accepting uploads
(``ingest``), the synchronous call (``sync``), replies (``replies``) and metrics; the
routes, ``/v2``, security and upload reading are sub-packages.
"""

from dlaas.web.app import create_app
from dlaas.web.context import WebContext

__all__ = ["WebContext", "create_app"]
