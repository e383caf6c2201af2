"""``GET /v1/models``: the served models, the default first, with their versions' states."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from dlaas.model.index import ModelIndex, ModelState
from dlaas.web.context import Context

router = APIRouter(tags=["models"])


def describe(model: ModelState, default: str) -> dict[str, Any]:
    """One model as ``/v1/models`` and the upload page show it."""
    return {
        "name": model.name,
        "default": model.name == default,
        "state": model.state,
        "reason": model.reason,
        "serving_version": model.serving(),
        "versions": [
            {"version": v, "state": s.state, "reason": s.reason}
            for v, s in sorted(model.versions.items())
        ],
        "classes": len(model.labels),
        "max_batch_size": model.max_batch_size,
        "version_policy": model.policy,
        "preprocessing": model.preprocessing.to_dict(),
    }


def listing(index: ModelIndex) -> dict[str, Any]:
    return {
        "default": index.default,
        "models": [describe(m, index.default) for m in index.models()],
    }


@router.get("/v1/models")
async def list_models(ctx: Context) -> dict[str, Any]:
    """The models this service serves: name, versions, state and preprocessing; the
    default (what a request that names no model gets) first."""
    return listing(ctx.models)
