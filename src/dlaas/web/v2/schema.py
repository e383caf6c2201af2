"""The Open Inference Protocol's JSON shapes, for ``/openapi.json``.

The routes read and write these bodies by hand (``v2.codec``): an infer body may carry
raw bytes after its JSON, and parsing it through a model would cost more than the rest
of the web tier's work. These classes only describe the shapes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(default_factory=dict, description="as GET /readyz")


class ModelReadiness(Readiness):
    name: str


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BYTES, FP32, ...")
    shape: list[int] = Field(description="-1: any size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data_size": n}: the data follows the JSON, raw'
    )
    data: list[Any] | None = Field(None, description="row-major values, when not binary")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class ErrorResponse(BaseModel):
    error: str


_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string", "example": "image"},
        "datatype": {"type": "string", "enum": ["BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer"}, "example": [1]},
        "parameters": {
            "type": "object",
            "description": '{"binary_data_size": n}: n bytes of this input follow the JSON',
        },
        "data": {
            "type": "array",
            "items": {"type": "string", "format": "byte"},
            "description": "the encoded images (JPEG, PNG, ...), base64",
        },
    },
}
_OUTPUT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "example": "probabilities"},
        "parameters": {
            "type": "object",
            "description": '{"binary_data": true} for raw bytes, {"classification": K} for '
            'the top K as "score:index:label"',
        },
    },
}
INFER_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "description": '{"binary_data_output": true}: every output raw',
                    },
                    "inputs": {"type": "array", "items": _TENSOR},
                    "outputs": {"type": "array", "items": _OUTPUT},
                },
            }
        },
        "application/octet-stream": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "the binary data extension: the JSON request, then each "
                "binary input's bytes; the Inference-Header-Content-Length header gives the "
                "JSON's length",
            }
        },
    },
}
NOT_READY: dict[str, Any] = {"model": Readiness, "description": "not ready yet (as /readyz)"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "a malformed request"),
        (404, "no such model"),
        (413, "an image or the request is too large"),
        (415, "an input is not an image this service reads"),
        (422, "an image is corrupt, truncated, too large in pixels, or undecodable"),
        (429, "too many images waiting; retry"),
    )
}
