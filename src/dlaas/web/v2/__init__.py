"""The Open Inference Protocol (KServe v2 REST) beside dlaas's own API.

Clients written for Triton, KServe, MLServer or OpenVINO Model Server reach the same
path as ``/v1/classify``: the same upload gate, checks, storage, queue, worker batching
and autoscaling. One request of N images is N queue messages of one job, answered
together (``dlaas.web.sync``). Refusals use the protocol's ``{"error": "..."}``
(``error_response``; ``create_app``'s handlers call it for every ``/v2`` path).

``health_router`` holds the probes, which stay open; ``build_router`` the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from dlaas import __version__
from dlaas.errors import ModelNotFound, ModelUnavailable, WebError
from dlaas.jobs.records import SCORES_DTYPE, ResultRecord, unpack_scores
from dlaas.model.index import ModelState, Target
from dlaas.web import sync
from dlaas.web.context import Context, WebContext, owner
from dlaas.web.routes.classify import STILL_QUEUED_DOC, still_queued
from dlaas.web.routes.ops import readiness, shown_checks
from dlaas.web.uploads.multipart import read_body
from dlaas.web.v2 import schema
from dlaas.web.v2.codec import (
    HEADER_LENGTH,
    Contract,
    InferRequest,
    encode_response,
    parse_request,
    top_k_strings,
)
from dlaas.web.v2.repository import add_repository_routes

MAX_IMAGES = 256  # per infer request; docs/api.md
MAX_BODY_BYTES = 256 * 1024 * 1024  # per infer request, unless one image needs more
RESULT_TOP_K = 5  # what a worker's result holds; a larger classification asks for all scores
PARSE_INLINE_BYTES = 256 * 1024  # more JSON than this is parsed off the event loop
PLATFORM = "onnxruntime_onnx"  # what runs the model, as Triton names it
INPUT, OUTPUT = "image", "probabilities"
EXTENSIONS = [
    "binary_tensor_data", "classification", "model_repository", "model_configuration",
]  # fmt: skip


def is_v2(request: Request) -> bool:
    path: str = request.scope["path"]
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A refusal in the protocol's shape, which Triton's and KServe's clients read."""
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


health_router = APIRouter(tags=["open inference protocol"])


@health_router.get("/v2/health/live", response_model=schema.Liveness)
async def live() -> dict[str, bool]:
    """The process is up (as ``/healthz``)."""
    return {"live": True}


@health_router.get(
    "/v2/health/ready", response_model=schema.Readiness, responses={503: schema.NOT_READY}
)
async def ready(request: Request, ctx: Context) -> JSONResponse:
    """Storage, queue, replies and workers are ready (as ``/readyz``); else 503."""
    ok, checks = await _readiness(request, ctx)
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


async def _readiness(request: Request, ctx: WebContext) -> tuple[bool, dict[str, str]]:
    ok, checks = await readiness(ctx)
    return ok, shown_checks(request, checks) or {}  # admins only see the checks (keys on)


def build_router(ctx: WebContext) -> APIRouter:
    """The metadata and inference routes, for the model this service serves."""
    router = APIRouter(tags=["open inference protocol"])
    _add_infer_routes(router, ctx)  # first: a request is matched against the routes in order
    _add_metadata_routes(router, ctx)
    add_repository_routes(router, ctx)
    return router


def _add_infer_routes(router: APIRouter, ctx: WebContext) -> None:
    limit_bytes = max(MAX_BODY_BYTES, ctx.settings.max_upload_bytes * 4 // 3 + 1024 * 1024)

    @router.post(
        "/v2/models/{model}/infer",
        response_model=schema.InferResponse,
        responses={**schema.ERRORS, **STILL_QUEUED_DOC},
        openapi_extra={"requestBody": schema.INFER_REQUEST_BODY},
    )
    async def infer(request: Request, model: str) -> Response:
        """Classify N images (a BYTES input, base64 in JSON or raw with the binary data
        extension); answer every class's probability, FP32 [N, classes], or with
        ``{"classification": K}`` on the output the top K, BYTES [N, K] "score:index:label"."""
        return await _infer(request, ctx.models.resolve(model, None))

    async def _infer(request: Request, target: Target) -> Response:
        contract = Contract(INPUT, OUTPUT, len(target.labels), MAX_IMAGES)
        await ctx.uploads.admit(request, limit_bytes)
        body = await read_body(request, limit_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        json_bytes = len(body) if header_length is None else _int_or_zero(header_length)
        if json_bytes > PARSE_INLINE_BYTES:  # binary images are sliced, never parsed
            parsed = await run_in_threadpool(parse_request, body, header_length, contract)
        else:
            parsed = parse_request(body, header_length, contract)
        ctx.uploads.check_owner(request, len(parsed.images))
        images = [(f"{INPUT}[{n}]", data) for n, data in enumerate(parsed.images)]
        answer = await sync.classify(
            ctx.ingest,
            ctx.hub,
            images,
            ctx.settings.classify_timeout_s,
            owner=owner(request),
            probabilities=parsed.needs_scores(RESULT_TOP_K),
            target=target,
        )
        if isinstance(answer, sync.StillQueued):
            return still_queued(answer)
        return _answer(target, parsed, answer)

    @router.post(
        "/v2/models/{model}/versions/{version}/infer",
        response_model=schema.InferResponse,
        responses={**schema.ERRORS, **STILL_QUEUED_DOC},
        openapi_extra={"requestBody": schema.INFER_REQUEST_BODY},
    )
    async def infer_version(request: Request, model: str, version: str) -> Response:
        """As ``POST /v2/models/{model}/infer``, on that version."""
        return await _infer(request, ctx.models.resolve(model, version))


def _add_metadata_routes(router: APIRouter, ctx: WebContext) -> None:
    index = ctx.models
    no_model: dict[int | str, dict[str, Any]] = {404: schema.ERRORS[404]}
    not_ready: dict[int | str, dict[str, Any]] = {**no_model, 503: schema.NOT_READY}

    @router.get("/v2", response_model=schema.ServerMetadata)
    async def server_metadata() -> dict[str, object]:
        """Server name, version and the protocol extensions it speaks."""
        return {"name": "dlaas", "version": __version__, "extensions": EXTENSIONS}

    @router.get("/v2/models/{model}", response_model=schema.ModelMetadata, responses=no_model)
    async def model_metadata(model: str) -> dict[str, object]:
        """Inputs and outputs: encoded images in, class probabilities out; the versions
        that serve."""
        return _metadata(index.get(model), None)

    @router.get(
        "/v2/models/{model}/versions/{version}",
        response_model=schema.ModelMetadata,
        responses=no_model,
    )
    async def model_version_metadata(model: str, version: str) -> dict[str, object]:
        """As ``GET /v2/models/{model}``, for one version."""
        found = index.get(model)
        if not version.isdigit() or int(version) not in found.versions:
            raise ModelNotFound(f"model {model!r} has no version {version!r}")
        return _metadata(found, int(version))

    @router.get(
        "/v2/models/{model}/ready", response_model=schema.ModelReadiness, responses=not_ready
    )
    async def model_ready(request: Request, model: str) -> JSONResponse:
        """The model has a READY version and the service is ready (as ``/readyz``)."""
        return await _model_ready(request, model, None)

    @router.get(
        "/v2/models/{model}/versions/{version}/ready",
        response_model=schema.ModelReadiness,
        responses=not_ready,
    )
    async def model_version_ready(request: Request, model: str, version: str) -> JSONResponse:
        """As ``GET /v2/models/{model}/ready``, for one version."""
        return await _model_ready(request, model, version)

    async def _model_ready(request: Request, model: str, version: str | None) -> JSONResponse:
        found = index.get(model)
        try:
            index.resolve(model, version)
            served = True
        except ModelUnavailable:
            served = False
        ok, checks = await _readiness(request, ctx)
        ok = ok and served
        body = {"name": found.name, "ready": ok, "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)


def _metadata(model: ModelState, version: int | None) -> dict[str, object]:
    shown = [version] if version is not None else (model.ready() or sorted(model.versions))
    return {
        "name": model.name,
        "versions": [str(v) for v in shown],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(model.labels)]}],
    }


def _answer(target: Target, request: InferRequest, records: list[ResultRecord]) -> Response:
    for n, record in enumerate(records):
        if record["status"] != "done":
            reason = record.get("error") or f"its result is {record['status']}"
            raise WebError(
                422, "undecodable_image", f"{INPUT}[{n}] could not be classified: {reason}"
            )
    (output,) = request.outputs
    scores = [_scores(r) for r in records]
    tensor: np.ndarray | list[list[str]]
    if output.classification is not None:
        k = output.classification
        tensor = [
            top_k_strings(r, k, target.labels, s) for r, s in zip(records, scores, strict=True)
        ]
    else:
        if any(s is None for s in scores):
            raise WebError(502, "no_scores", "a worker answered without the probabilities; retry")
        tensor = np.stack([s for s in scores if s is not None])
    body, headers, media_type = encode_response(
        model_name=target.model,
        model_version=str(target.version or 1),
        request_id=request.id,
        output_name=OUTPUT,
        output=output,
        tensor=tensor,
    )
    return Response(body, headers=headers, media_type=media_type)


def _int_or_zero(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _scores(record: ResultRecord) -> np.ndarray | None:
    packed = record.get("probabilities")
    if not isinstance(packed, str):
        return None
    return np.frombuffer(unpack_scores(packed), dtype=SCORES_DTYPE)
