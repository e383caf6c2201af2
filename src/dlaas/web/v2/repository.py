"""Triton's model repository and model configuration extensions, which its tools need.

``POST /v2/repository/index`` lists every model version with its state;
``POST /v2/repository/models/{name}/load`` re-reads the model's folder, warms each new
version with a real batch through the workers, and only then lets it take traffic (the
old version serves until that moment, then drains: its queued tasks still run, and
workers drop it once unused); ``.../unload`` stops serving a model. Both are admin-only
when keys are on (``security.auth``). ``GET /v2/models/{name}/config`` answers in
Triton's JSON shape, which ``perf_analyzer`` reads before it sends a request.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dlaas.errors import DlaasError, ModelNotFound
from dlaas.model.index import ModelState, Target
from dlaas.web import sync
from dlaas.web.context import WebContext
from dlaas.web.v2 import schema

WARM_UP_IMAGES = 2  # one small batch: the session's first runs are the slow ones
WARM_UP_PHOTO = "chelsea.jpg"  # a public-domain photo shipped for int8 calibration
MIN_WARM_UP_TIMEOUT_S = 60.0  # a worker may have to start and load the version first
WARM_UP_OWNER = "model-warm-up"


def add_repository_routes(router: APIRouter, ctx: WebContext) -> None:
    index = ctx.models

    @router.post("/v2/repository/index")
    async def repository_index(request: Request) -> list[dict[str, Any]]:
        """Every model version with its state (READY, LOADING, UNAVAILABLE) and the
        reason when it is not READY; ``{"ready": true}`` lists the READY ones only."""
        only_ready = bool((await _json(request)).get("ready", False))
        rows = []
        for model in index.models():
            if not model.versions:
                rows.append({"name": model.name, "state": "UNAVAILABLE", "reason": model.reason})
            for version, state in sorted(model.versions.items()):
                row = {"name": model.name, "version": str(version), "state": state.state}
                row["reason"] = state.reason
                rows.append(row)
        return [r for r in rows if r["state"] == "READY" or not only_ready]

    @router.post("/v2/repository/models/{model}/load", responses=_errors(400, 404))
    async def load(model: str) -> JSONResponse:
        """Read the model's folder again; warm each version it will serve that is not
        serving yet, then serve it. 400 with the reason if no version ends up READY."""
        staged_model, staged = await run_in_threadpool(index.stage, model)
        results = await asyncio.gather(*(_warm_up(ctx, staged_model, v) for v in staged))
        done = index.finish(model, dict(zip(staged, results, strict=True)))
        if not done.ready():
            reasons = "; ".join(f"version {v}: {s.reason}" for v, s in done.versions.items())
            return JSONResponse(
                {"error": f"failed to load {model!r}: {reasons or done.reason}"}, status_code=400
            )
        return JSONResponse({})

    @router.post("/v2/repository/models/{model}/unload", responses=_errors(404))
    async def unload(model: str) -> JSONResponse:
        """Stop serving the model: requests for it get 503 until it is loaded again."""
        index.unload(model)
        return JSONResponse({})

    @router.get("/v2/models/{model}/config", responses=_errors(404))
    async def model_config(model: str) -> dict[str, Any]:
        """The model configuration in Triton's JSON shape."""
        return triton_config(index.get(model))

    @router.get("/v2/models/{model}/versions/{version}/config", responses=_errors(404))
    async def model_version_config(model: str, version: str) -> dict[str, Any]:
        """As ``GET /v2/models/{model}/config``."""
        found = index.get(model)
        if not version.isdigit() or int(version) not in found.versions:
            raise ModelNotFound(f"model {model!r} has no version {version!r}")
        return triton_config(found)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: schema.ERRORS[code] for code in codes}


def triton_config(model: ModelState) -> dict[str, Any]:
    """``max_batch_size`` 0 as Triton means it: the request's first dimension is its own
    (N images, shape [-1]); dlaas batches across requests in its workers, up to the
    config's ``max_batch_size``, which ``parameters`` shows."""
    policy: dict[str, Any] = (
        {"all": {}} if model.policy == "all" else {"latest": {"num_versions": 1}}
    )
    return {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 0,
        "version_policy": policy,
        "input": [{"name": "image", "data_type": "TYPE_STRING", "dims": [-1]}],
        "output": [
            {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [-1, len(model.labels)]}
        ],
        "dynamic_batching": {},
        "parameters": {
            "dlaas_max_batch_size": {"string_value": str(model.max_batch_size)},
            "dlaas_preprocessing": {"string_value": str(model.preprocessing.to_dict())},
        },
    }


async def _warm_up(ctx: WebContext, model: ModelState, version: int) -> str | None:
    """Send a real batch to ``version`` through the queue and the workers; None when
    every image came back classified, else what went wrong."""
    photo = resources.files("dlaas.model").joinpath("calibration_photos", WARM_UP_PHOTO)
    data = photo.read_bytes()
    images = [(f"warm-up-{n}.jpg", data) for n in range(WARM_UP_IMAGES)]
    target = Target(model.name, version, model.labels)
    timeout_s = max(ctx.settings.classify_timeout_s, MIN_WARM_UP_TIMEOUT_S)
    try:
        answer = await sync.classify(
            ctx.ingest, ctx.hub, images, timeout_s, owner=WARM_UP_OWNER, target=target
        )
    except DlaasError as exc:
        return str(exc)
    if isinstance(answer, sync.StillQueued):
        return f"no worker classified the warm-up batch within {timeout_s:g} s"
    for record in answer:
        if record["status"] != "done":
            return record.get("error") or f"the warm-up image was {record['status']}"
    return None


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = await request.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
