"""Routes of synchronous classification: one image in, its labels in the response.

When the call's ``timeout_s`` runs out the image is still queued: the answer is ``202``
with the job to poll (``Location``), not an error (docs/api.md).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from dlaas.errors import WebError
from dlaas.jobs.records import ResultRecord, short_label
from dlaas.model.index import Target
from dlaas.web import sync
from dlaas.web.context import WebContext, owner
from dlaas.web.routes.docs import parameter_doc
from dlaas.web.routes.lean import LeanRoute, context_of, query_number, query_text
from dlaas.web.uploads import multipart_doc

STILL_QUEUED_DOC: dict[int | str, dict[str, object]] = {
    202: {
        "description": "no result within `timeout_s`: the image is queued as the job named "
        "in `Location` and the body; poll it with GET /v1/jobs/{job_id}",
        "headers": {"Location": {"schema": {"type": "string"}, "description": "the job"}},
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["job_id", "status", "location", "detail"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "status": {"type": "string", "enum": ["queued"]},
                        "location": {"type": "string"},
                        "detail": {"type": "string"},
                    },
                }
            }
        },
    }
}


ONE_IMAGE_REFUSALS: dict[int | str, dict[str, object]] = {
    400: {"description": "no file, or an empty one"},
    413: {"description": "the file or the body is too large"},
    415: {"description": "the file is not an image this service reads, or the body not multipart"},
    422: {"description": "an image over --max-pixels, corrupt or cut short"},
    429: {"description": "too many images wait; retry after `Retry-After` seconds"},
}


class _Json(JSONResponse):
    """JSON written by orjson: ~10x faster than the standard library on a result."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def still_queued(queued: sync.StillQueued) -> JSONResponse:
    """202 naming the job to poll, in the body and in ``Location``."""
    location = f"/v1/jobs/{queued.job_id}"
    body = {"job_id": queued.job_id, "status": "queued", "location": location}
    body["detail"] = queued.detail
    return JSONResponse(body, status_code=202, headers={"Location": location})


async def _classify_one(
    request: Request,
    ctx: WebContext,
    image: tuple[str, bytes],
    timeout_s: float,
    target: Target,
    started_at: float,
) -> list[ResultRecord] | sync.StillQueued:
    return await sync.classify(
        ctx.ingest, ctx.hub, [image], timeout_s, owner=owner(request), started_at=started_at,
        target=target,
    )  # fmt: skip


TIMEOUT_MAX_S = 3600.0
TEXT = {"type": "string"}


def _parameters(default_timeout_s: float) -> list[dict[str, Any]]:
    """``/v1/classify``'s query parameters, read by the route itself (``LeanRoute``)."""
    timeout = {"type": "number", "exclusiveMinimum": 0, "maximum": TIMEOUT_MAX_S}
    return [
        parameter_doc(
            "timeout_s",
            "query",
            {**timeout, "default": default_timeout_s},
            "how long to wait for the answer; then 202 with the job to poll",
        ),
        parameter_doc("model", "query", TEXT, "the model (GET /v1/models); default first"),
        parameter_doc("version", "query", TEXT, "the model's version; default its newest"),
    ]


def build_router(default_timeout_s: float) -> APIRouter:
    """The routes; built per app because ``timeout_s``'s default is a setting the schema shows."""
    router = APIRouter(tags=["classify"], route_class=LeanRoute)

    @router.post(
        "/v1/classify",
        response_class=JSONResponse,
        openapi_extra={**multipart_doc("file"), "parameters": _parameters(default_timeout_s)},
        responses={**STILL_QUEUED_DOC, **ONE_IMAGE_REFUSALS},
    )
    async def classify(request: Request) -> Response:
        """Classify one image (multipart field ``file``) and wait for its top-5."""
        started_at = time.time()
        ctx = context_of(request)
        timeout_s = query_number(
            request, "timeout_s", default_timeout_s, above=0.0, most=TIMEOUT_MAX_S
        )
        model, version = query_text(request, "model"), query_text(request, "version")
        target = ctx.models.resolve(model, version)
        filename, data, fields = await ctx.uploads.one_file_fields(request, "file")
        if model is None and fields.get("model"):
            target = ctx.models.resolve(fields["model"], fields.get("version") or version)
        answer = await _classify_one(request, ctx, (filename, data), timeout_s, target, started_at)
        if isinstance(answer, sync.StillQueued):
            return still_queued(answer)
        return _Json(answer[0])

    @router.post(
        "/",
        response_class=PlainTextResponse,
        openapi_extra=multipart_doc("myfile"),
        responses={**STILL_QUEUED_DOC, **ONE_IMAGE_REFUSALS},
    )
    async def classify_compat(request: Request) -> Response:
        """Workload-generator compatibility: field ``myfile`` in, top-1 short label out;
        an optional ``model`` field picks the model."""
        started_at = time.time()
        ctx = context_of(request)
        filename, data, fields = await ctx.uploads.one_file_fields(request, "myfile")
        target = ctx.models.resolve(fields.get("model") or None, fields.get("version") or None)
        timeout_s = ctx.settings.classify_timeout_s
        answer = await _classify_one(request, ctx, (filename, data), timeout_s, target, started_at)
        if isinstance(answer, sync.StillQueued):
            return still_queued(answer)
        (result,) = answer
        if result["status"] != "done":
            raise WebError(
                422, "undecodable_image", result.get("error") or "the image could not be read"
            )
        return PlainTextResponse(short_label(result["predictions"][0]["label"]))

    return router
