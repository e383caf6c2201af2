"""The API docs: Swagger UI from the ``swagger-ui-bundle`` package, so ``/docs`` works
offline and asks nothing of another host; and the OpenAPI schema as the API really answers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from dlaas.errors import WebError
from dlaas.web.security.auth import is_public

ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}

DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>dlaas API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script src="/static/swagger-init.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui() -> HTMLResponse:
    return HTMLResponse(DOCS_HTML)


@router.get("/docs/static/{name}")
async def swagger_asset(name: str) -> Response:
    if name not in ASSETS:
        raise WebError(404, "not_found", f"no docs file {name!r}")
    return Response(
        _asset(name), media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"}
    )


@cache
def _asset(name: str) -> bytes:
    return bytes(swagger_ui_path.joinpath(name).read_bytes())


JOB_ID_SCHEMA = {"type": "string", "pattern": "^[0-9a-f]{32}$"}  # as jobs.layout.is_job_id


def parameter_doc(
    name: str, where: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    """One parameter, for ``openapi_extra``'s ``parameters``, that the route reads itself
    (declared with ``include_in_schema=False``): the schema then says exactly what the code
    accepts, where FastAPI's own check would answer a bare 422 instead of the route's
    clearer refusal."""
    parameter = {"name": name, "in": where, "required": required, "schema": schema}
    parameter["description"] = description
    return parameter


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "additionalProperties": True,
}


def install_openapi(app: FastAPI, *, keys_on: bool) -> None:
    """Describe what the app really answers: refusals are ``{error, detail}`` (422 too,
    and every 4xx a route declares without a body of its own), and with keys on, every
    route outside ``is_public`` takes a bearer key."""

    original = app.openapi  # FastAPI's own, with everything it knows (webhooks, tags)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        error = {"$ref": "#/components/schemas/Error"}
        if keys_on:
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {
                        "description": "Bad request",
                        "content": {"application/json": {"schema": error}},
                    }
                for code, response in responses.items():
                    if code.startswith("4") and "content" not in response:
                        response["content"] = {"application/json": {"schema": error}}
                responses.setdefault(
                    "default",
                    {
                        "description": "A refusal",
                        "content": {"application/json": {"schema": error}},
                    },
                )
                if keys_on and not is_public(path, method.upper()):
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
