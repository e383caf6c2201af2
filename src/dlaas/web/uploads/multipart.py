"""Reading a one-image upload: a fast path for the common body, the full parser for the rest.

Nearly every synchronous call is one part, one file, sent by curl, a browser or an HTTP
library. For that shape, slicing the image out of the body costs a few ``bytes.find``
calls in C, where a streaming multipart parser spends Python calls per chunk and spools
to a temporary file. Anything else (a preamble, more parts, RFC 2231 filenames) goes to
Starlette's parser, so the fast path never has to be clever to be correct.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator

from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from dlaas.errors import WebError

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_DISPOSITION = re.compile(
    rb'^content-disposition:\s*form-data;\s*name="([^"\\]*)";\s*filename="([^"\\]*)"\s*$',
    re.IGNORECASE,
)


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole request body, refused with 413 as soon as it passes ``limit_bytes``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise WebError(
                413,
                "request_too_large",
                f"the request is over the {limit_bytes / 1e6:.1f} MB limit",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def single_file(body: bytes, content_type: str, field: str) -> tuple[str, bytes] | None:
    """``(filename, data)`` when ``body`` is exactly one file part in ``field``, else None.

    None means "not the simple shape", never "invalid": the caller then asks the full
    parser, which gives the precise answer (including the error for a broken body).
    """
    match = _BOUNDARY.search(content_type)
    if match is None:
        return None
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    if not body.startswith(delimiter + b"\r\n"):
        return None
    headers_start = len(delimiter) + 2
    headers_end = body.find(b"\r\n\r\n", headers_start)
    if headers_end < 0:
        return None
    filename: str | None = None
    for line in body[headers_start:headers_end].split(b"\r\n"):
        disposition = _DISPOSITION.match(line)
        if disposition is not None:
            if disposition.group(1).decode("latin-1") != field:
                return None
            filename = disposition.group(2).decode("utf-8", errors="replace")
        elif not line.lower().startswith(b"content-type:"):
            return None  # an unusual header: let the full parser judge it
    if filename is None:
        return None
    data_start = headers_end + 4
    data_end = body.find(b"\r\n" + delimiter, data_start)
    if data_end < 0:
        return None
    rest = body[data_end + 2 + len(delimiter) :]
    if not rest.startswith(b"--") or rest[2:].strip(b"\r\n \t"):
        return None  # another part follows, or trailing bytes: the full parser decides
    return filename, body[data_start:data_end]


async def parse_form(headers: Headers, body: bytes, max_files: int) -> FormData:
    """Starlette's parser over a body already in memory; 400 when it is not valid.

    A body must end with its closing delimiter: the parser accepts a truncated one
    silently and leaves the unfinished part's spooled file open. The caller closes the
    form (``await form.close()``) to free the spooled files of the parts it returns.
    """
    match = _BOUNDARY.search(headers.get("content-type", ""))
    closing = b"--" + (match.group(1) or match.group(2)).encode("latin-1") + b"--" if match else b""
    trimmed = body.rstrip(b"\r\n \t")
    if not closing or not (trimmed == closing or trimmed.endswith(b"\r\n" + closing)):
        raise WebError(
            400,
            "bad_multipart",
            "the multipart body is incomplete: it must name a boundary and end with "
            "--BOUNDARY--; send the whole request again",
        )

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    parser = _ClosingParser(headers, stream(), max_files=max_files, max_fields=100)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise WebError(400, "bad_multipart", exc.message) from None


class _ClosingParser(MultiPartParser):
    """Starlette's parser, closing the spooled file of any part it started but never ended.

    python-multipart is lenient with a part whose closing delimiter is damaged: it ends
    without an error, and the file it had opened for that part would stay open.
    """

    async def parse(self) -> FormData:
        form = await super().parse()
        returned = {id(value.file) for _, value in form.multi_items() if hasattr(value, "file")}
        for spooled in getattr(self, "_files_to_close_on_error", ()):
            if id(spooled) not in returned:
                spooled.close()
        return form
