"""The upload page: ``/`` (in the schema, as ``POST /`` shares its path) and its static
files (kept out of the schema)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from dlaas.errors import WebError

MEDIA_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}

router = APIRouter()


@router.get("/", response_class=HTMLResponse, tags=["page"])
async def index() -> HTMLResponse:
    """The upload page, for a browser."""
    return HTMLResponse(_static_text("index.html"))


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    suffix = name.rsplit(".", 1)[-1]
    if "/" in name or suffix not in MEDIA_TYPES:
        raise WebError(404, "not_found", f"no static file {name!r}")
    try:
        text = _static_text(name)
    except FileNotFoundError:
        raise WebError(404, "not_found", f"no static file {name!r}") from None
    return Response(text, media_type=MEDIA_TYPES[suffix], headers={"Cache-Control": "no-cache"})


def _static_text(name: str) -> str:
    return resources.files("dlaas.web").joinpath("static", name).read_text(encoding="utf-8")
