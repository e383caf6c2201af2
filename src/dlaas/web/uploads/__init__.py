"""Reading uploads off a request: one gate for every upload route, then the files.

Every refusal happens before any image is stored, in a fixed order: the declared
length (413), the backlog (429), the caller's own backlog (429), the content type
(415), then the body itself. ``/v1`` and ``/v2`` both pass ``UploadReader.admit``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from dlaas.errors import WebError
from dlaas.queue.base import Queue
from dlaas.settings import Settings
from dlaas.web.security.tenancy import OwnerBacklog
from dlaas.web.uploads.multipart import parse_form, read_body, single_file

ONE_FILE_SLACK_BYTES = 1024 * 1024  # multipart headers around a single image
JOB_SLACK_BYTES = 1024 * 1024 * 1024  # ... and around the many files of a job


class BacklogGate:
    """429 while the queue holds ``max_backlog`` images or more.

    The depth is re-read at most once per ``refresh_s`` (by ``clock``), so a burst of
    uploads costs the queue one ``stats`` call, not one each.
    """

    def __init__(
        self,
        queue: Queue,
        max_backlog: int,
        *,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.max_backlog = max_backlog
        self.refresh_s = refresh_s
        self.clock = clock
        self._visible = 0
        self._checked_at: float | None = None

    async def check(self) -> None:
        now = self.clock()
        if self._checked_at is None or now - self._checked_at >= self.refresh_s:
            self._visible = (await run_in_threadpool(self.queue.stats)).visible
            self._checked_at = now
        if self._visible >= self.max_backlog:
            raise WebError(
                429,
                "busy",
                f"{self._visible} images are waiting; retry in a few seconds",
                headers={"Retry-After": "5"},
            )


class UploadReader:
    """The files of an upload, each within ``--max-upload-mb``, behind the backlog gates:
    the whole queue's, then the caller's own (``--max-backlog-per-owner``)."""

    def __init__(
        self, settings: Settings, backlog: BacklogGate, owners: OwnerBacklog | None = None
    ) -> None:
        self.max_upload_bytes = settings.max_upload_bytes
        self.max_upload_mb = settings.max_upload_mb
        self.backlog = backlog
        self.owners = owners

    async def admit(self, request: Request, limit_bytes: int, images: int = 1) -> None:
        """The gate before any byte of the body is read: its declared length, the whole
        queue's backlog, then the caller's own."""
        check_length(request, limit_bytes)
        await self.backlog.check()
        self.check_owner(request, images)

    def check_owner(self, request: Request, images: int) -> None:
        """The caller's own backlog, once the number of images is known."""
        if self.owners is not None:
            self.owners.check(request.state.owner, images)

    async def one_file(self, request: Request, field: str) -> tuple[str, bytes]:
        """The single uploaded image: sliced out of a simple body, else fully parsed."""
        filename, data, _ = await self.one_file_fields(request, field)
        return filename, data

    async def one_file_fields(
        self, request: Request, field: str
    ) -> tuple[str, bytes, dict[str, str]]:
        """As ``one_file``, with the form's text fields (``model``), if it has any."""
        limit = self.max_upload_bytes + ONE_FILE_SLACK_BYTES
        await self.admit(request, limit)
        content_type = require_multipart(request, field)
        body = await read_body(request, limit)
        simple = single_file(body, content_type, field)
        if simple is not None:
            filename, data = simple
            if len(data) > self.max_upload_bytes:
                raise self._too_large(filename)
            return filename or "upload", data, {}
        form = await parse_form(request.headers, body, max_files=1)
        try:
            uploads = [v for v in form.getlist(field) if isinstance(v, UploadFile)]
            if not uploads:
                raise _no_files(field)
            texts = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            return uploads[0].filename or "upload", await self.read(uploads[0]), texts
        finally:
            await form.close()

    async def many_files(self, request: Request, field: str, max_files: int) -> list[UploadFile]:
        """The files of a job, still spooled: read each with ``read``; close the request."""
        await self.admit(request, self.max_upload_bytes * 64 + JOB_SLACK_BYTES)
        require_multipart(request, field)
        try:
            form = await request.form(max_files=max_files, max_fields=100)
        except StarletteHTTPException as exc:
            raise WebError(400, "bad_multipart", str(exc.detail)) from None
        files = [v for v in form.getlist(field) if isinstance(v, UploadFile)]
        if not files:
            raise _no_files(field)
        try:
            self.check_owner(request, len(files))
        except WebError:
            await form.close()
            raise
        return files

    async def read(self, upload: UploadFile) -> bytes:
        data = await upload.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise self._too_large(upload.filename)
        return data

    def _too_large(self, filename: str | None) -> WebError:
        return WebError(
            413,
            "file_too_large",
            f"{filename!r} is over the {self.max_upload_mb:g} MB limit "
            "(raise it with --max-upload-mb)",
        )


def check_length(request: Request, limit_bytes: int) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit_bytes:
        raise WebError(
            413,
            "request_too_large",
            f"the request is {int(length) / 1e6:.1f} MB; the limit is {limit_bytes / 1e6:.1f} MB",
        )


def require_multipart(request: Request, field: str) -> str:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise WebError(
            415,
            "multipart_required",
            f"send the image as multipart/form-data in the field {field!r}",
        )
    return content_type


def _no_files(field: str) -> WebError:
    return WebError(
        400, "no_files", f"no file in the multipart field {field!r}; send the image there"
    )


IMAGE_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff"


def multipart_doc(field: str, *, many: bool = False, max_files: int = 1) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its files itself: the schema (and so the
    docs page and schema-driven tests) then know to send ``field`` as files, each a
    non-empty image (of the types OpenAPI's ``encoding`` names).

    Whether the bytes really are an image no JSON Schema can say: a file that is not one
    is refused with 415, or 422 when its header is broken (docs/api.md). ``max_files`` is
    said in words, not as ``maxItems``: a fuzzer tries the bound itself, and a job of
    10,000 files takes longer to upload than its requests wait (10 s)."""
    binary = {"type": "string", "format": "binary", "minLength": 1}
    files = {
        "type": "array",
        "items": binary,
        "minItems": 1,
        "description": f"at most {max_files} files (--max-files-per-job)",
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [field],
                        "properties": {field: files if many else binary},
                    },
                    "encoding": {field: {"contentType": IMAGE_TYPES}},
                }
            },
        }
    }
