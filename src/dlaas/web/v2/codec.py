"""The Open Inference Protocol's (KServe v2) tensors: parse an infer request, encode its answer.

A request is JSON, or JSON followed by raw tensor bytes (the binary data extension: the
``Inference-Header-Content-Length`` header says where the JSON ends, and each binary
input names its ``binary_data_size``). dlaas takes one ``BYTES`` input of encoded
images: base64 strings in JSON, length-prefixed raw bytes in binary. Its one output is
the probabilities, ``FP32 [N, classes]``, or with the classification extension the top
K as ``"score:index:label"`` strings, ``BYTES [N, K]``.

Everything here is pure: no I/O, so each rule is tested on bytes alone.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pybase64

from dlaas.errors import WebError
from dlaas.jobs.records import ResultRecord

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Output:
    """One requested output: raw bytes after the JSON or JSON data; top-K or every score."""

    binary: bool
    classification: int | None = None


@dataclass(frozen=True)
class InferRequest:
    images: list[bytes]
    outputs: list[Output]
    id: str | None = None

    def needs_scores(self, result_top_k: int) -> bool:
        """Whether an output needs every class's score, more than a result's top-k holds."""
        return any(
            o.classification is None or o.classification > result_top_k for o in self.outputs
        )


@dataclass(frozen=True)
class Contract:
    """What the served model takes and gives, as the metadata route shows it."""

    input_name: str
    output_name: str
    classes: int
    max_images: int


def bad(message: str) -> WebError:
    return WebError(400, "bad_request", message)


def parse_request(body: bytes, header_length: str | None, contract: Contract) -> InferRequest:
    """The images and outputs of an infer request; WebError 400 says what is wrong."""
    if header_length is None:
        head, binary = body, memoryview(b"")
    else:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise bad(
                f"{HEADER_LENGTH} is {header_length!r}; it must be the length of the JSON "
                f"at the start of the {len(body)}-byte body"
            )
        head, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    try:
        # orjson: about 2.5x the standard library on a body that is mostly one base64
        # string, and a nesting bomb is a 400 here, not a RecursionError.
        doc = orjson.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"the inference request is not JSON ({exc}); send a KServe v2 request") from None
    if not isinstance(doc, dict):
        raise bad("the inference request must be a JSON object with 'inputs'")
    params = _object(doc.get("parameters"), "parameters")
    binary_output = params.get("binary_data_output", False) is True
    images, used = _images(doc.get("inputs"), binary, contract)
    if used != len(binary):
        raise bad(
            f"{len(binary) - used} bytes follow the JSON beyond what 'binary_data_size' "
            "declares; check the inputs' binary_data_size"
        )
    request_id = doc.get("id")
    return InferRequest(
        images=images,
        outputs=_outputs(doc.get("outputs"), binary_output, contract),
        id=request_id if isinstance(request_id, str) else None,
    )


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"'{where}' must be a JSON object")
    return value


def _images(inputs: Any, binary: memoryview, contract: Contract) -> tuple[list[bytes], int]:
    """The encoded images of the one input, and how many binary bytes they took."""
    name = contract.input_name
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad(f"send exactly one input, {name!r} (BYTES, shape [N] or [N, 1])")
    tensor = inputs[0]
    if tensor.get("name") != name:
        raise bad(f"unknown input {tensor.get('name')!r}; this model's input is {name!r}")
    if tensor.get("datatype") != "BYTES":
        raise bad(
            f"input {name!r} is {tensor.get('datatype')!r}; send BYTES (encoded images: "
            "JPEG, PNG, ...)"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) not in (1, 2)
        or not all(type(d) is int for d in shape)
        or shape[0] < 1
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise bad(f"input {name!r} has shape {shape!r}; use [N] or [N, 1] with N >= 1")
    count = shape[0]
    if count > contract.max_images:
        raise bad(f"{count} images in one request; the limit is {contract.max_images}: split it")
    params = _object(tensor.get("parameters"), "parameters")
    if "shared_memory_region" in params:
        raise bad("shared memory inputs are not supported; send the bytes in the request")
    size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or not 0 <= size <= len(binary):
            raise bad(
                f"input {name!r} declares binary_data_size {size!r} but {len(binary)} bytes "
                "follow the JSON"
            )
        return _unpack_bytes(binary[:size], count, name), size
    return _base64_items(tensor.get("data"), count, name), 0


def _unpack_bytes(raw: memoryview, count: int, name: str) -> list[bytes]:
    """A BYTES tensor in binary form: each element is a 4-byte little-endian length, then data."""
    out: list[bytes] = []
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 4 > end:
            raise bad(f"input {name!r}'s binary data ends inside an element's length prefix")
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + length > end:
            raise bad(f"input {name!r}'s element {len(out)} says {length} bytes; fewer follow")
        out.append(bytes(raw[pos : pos + length]))
        pos += length
    if len(out) != count:
        raise bad(f"input {name!r} has shape [{count}...] but its binary data holds {len(out)}")
    return out


def _base64_items(data: Any, count: int, name: str) -> list[bytes]:
    """A BYTES tensor in JSON: base64 strings, flat or nested one level ([N, 1])."""
    if not isinstance(data, list):
        raise bad(f"input {name!r} has no 'data' and no binary_data_size; send the images")
    flat = [x for row in data for x in (row if isinstance(row, list) else [row])]
    if len(flat) != count:
        raise bad(f"input {name!r} has shape [{count}...] but its data holds {len(flat)}")
    out = []
    for n, item in enumerate(flat):
        if not isinstance(item, str):
            raise bad(f"input {name!r} element {n} is not a string; send base64 text")
        try:
            # SIMD base64: 60x the standard library's speed on a 100 kB photo, the whole
            # cost of the JSON form over the binary one (docs/performance.md, /v2).
            out.append(pybase64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise bad(
                f"input {name!r} element {n} is not base64; JSON carries images as base64 "
                "(or use the binary data extension)"
            ) from None
    return out


def _outputs(requested: Any, binary_default: bool, contract: Contract) -> list[Output]:
    if requested is None or requested == []:
        return [Output(binary=binary_default)]
    if not isinstance(requested, list) or len(requested) != 1 or not isinstance(requested[0], dict):
        raise bad(f"request at most one output, {contract.output_name!r}")
    output = requested[0]
    if output.get("name") != contract.output_name:
        raise bad(
            f"unknown output {output.get('name')!r}; this model's output is "
            f"{contract.output_name!r}"
        )
    params = _object(output.get("parameters"), "parameters")
    binary = params.get("binary_data", binary_default)
    k = params.get("classification")
    if k is not None and (type(k) is not int or not 1 <= k <= contract.classes):
        raise bad(f"classification is {k!r}; ask for 1 to {contract.classes} classes")
    return [Output(binary=binary is True, classification=k)]


# Encoding the answer ---------------------------------------------------------------


def top_k_strings(
    result: ResultRecord, k: int, labels: Sequence[str], scores: np.ndarray | None
) -> list[str]:
    """The classification extension's ``"score:index:label"``, best first, as Triton writes."""
    if scores is not None:
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        ranked = top[np.argsort(-scores[top], kind="stable")]
        return [f"{scores[i]:f}:{i}:{labels[i]}" for i in ranked.tolist()]
    return [f"{p['score']:f}:{p['class_id']}:{p['label']}" for p in result["predictions"][:k]]


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    output_name: str,
    output: Output,
    tensor: np.ndarray | list[list[str]],
) -> tuple[bytes, dict[str, str], str]:
    """``(body, headers, media type)``: the JSON answer, with raw bytes after it if asked."""
    if isinstance(tensor, np.ndarray):
        shape, datatype = list(tensor.shape), "FP32"
        raw = tensor.astype("<f4").tobytes() if output.binary else b""
        data: list[Any] = [] if output.binary else tensor.ravel().tolist()
    else:
        shape, datatype = [len(tensor), len(tensor[0]) if tensor else 0], "BYTES"
        flat = [s for row in tensor for s in row]
        raw = serialize_bytes([s.encode() for s in flat]) if output.binary else b""
        data = [] if output.binary else flat
    described: dict[str, Any] = {"name": output_name, "datatype": datatype, "shape": shape}
    if output.binary:
        described["parameters"] = {"binary_data_size": len(raw)}
    else:
        described["data"] = data
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = [described]
    head = orjson.dumps(doc)  # compact; 1,000 floats in ~20 us where json takes ~300
    if not output.binary:
        return head, {}, "application/json"
    return head + raw, {HEADER_LENGTH: str(len(head))}, "application/octet-stream"
