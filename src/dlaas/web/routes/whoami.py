"""``/v1/whoami``: lets a page learn whether to ask for a key, without an error."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dlaas.web.context import Context

router = APIRouter(tags=["auth"])


@router.get("/v1/whoami")
async def whoami(request: Request, ctx: Context) -> dict[str, Any]:
    """Whether this service needs a key, and whose the presented key is (null: none valid).

    Always 200, so a page can find out whether to ask for a key without an error.
    """
    role = getattr(request.state, "role", None)
    return {
        "auth_required": ctx.keys is not None,
        "owner": request.state.owner if role is not None else None,
        "role": role,
    }
