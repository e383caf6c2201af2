"""The routers of dlaas's own API, one module per concern; ``/v2`` is in ``dlaas.web.v2``."""
