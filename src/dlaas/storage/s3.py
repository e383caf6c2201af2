"""Objects in an S3 bucket (AWS, or any S3-compatible store such as SeaweedFS or MinIO).

``s3://bucket/prefix`` keeps every key under ``prefix/``. A PUT is atomic in S3 itself,
so readers never see half an object. Objects are written without ACLs: they inherit the
bucket's (private) policy, and the stack's bucket blocks public access outright.

Create-if-absent is a PUT with ``If-None-Match: *``: S3 answers 412 when the key exists,
and 409 ``ConditionalRequestConflict`` while another conditional write to the key is in
flight (retried here). A store that ignores the header would let every racer win, so the
web tier writes one probe key twice at start-up and says loudly if the second succeeds
(workers, which never create-if-absent and may not delete outside ``inputs/``, do not).
"""

from __future__ import annotations

import logging
import random
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from dlaas.aws.clients import describe_error, error_code, http_status, make_client
from dlaas.errors import ConfigError, ObjectNotFound, StorageError
from dlaas.storage.base import Storage, validate_key, validate_source_key

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ADDRESSING_STYLES = ("auto", "path", "virtual")
_NOT_FOUND = ("NoSuchKey", "404", "NotFound")
_CONFLICT_ATTEMPTS = 8  # 409 ConditionalRequestConflict: another conditional PUT in flight

log = logging.getLogger("dlaas.storage")


class S3Storage(Storage):
    """A Storage on one bucket and key prefix, through one thread-safe boto3 client."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        max_pool_connections: int = 32,
        read_only: bool = False,
    ) -> None:
        """``client`` overrides the rest (tests); otherwise one is built from the settings.

        ``max_pool_connections`` bounds concurrent requests: the web tier stores many
        uploads at once, so it is larger than botocore's default of 10.
        """
        if not _BUCKET.match(bucket):
            raise ConfigError(
                f"S3 bucket name {bucket!r} is invalid; use 3-63 characters from a-z 0-9 . -"
            )
        prefix = prefix.strip("/")
        self.read_only = read_only
        if prefix:
            try:
                validate_source_key(prefix) if read_only else validate_key(prefix)
            except ValueError as exc:
                raise ConfigError(f"S3 key prefix {prefix!r} is invalid: {exc}") from None
        if addressing_style not in ADDRESSING_STYLES:
            raise ConfigError(
                f"S3 addressing style {addressing_style!r} is invalid; "
                f"use one of {', '.join(ADDRESSING_STYLES)}"
            )
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._owns_client = client is None  # a shared client is closed by whoever made it
        self.client = client or make_client(
            "s3",
            region=region,
            endpoint_url=endpoint_url,
            max_pool_connections=max_pool_connections,
            s3_addressing_style=addressing_style,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        check: bool = True,
        **options: Any,
    ) -> S3Storage:
        """Open ``s3://bucket[/prefix]``. With ``check``, a missing bucket fails here, at start.

        ``None`` for endpoint or region means the SDK's own resolution, so
        ``AWS_ENDPOINT_URL_S3`` and ``AWS_REGION`` apply.
        """
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"storage URL {url!r} is not s3://bucket/prefix")
        if parsed.query or parsed.fragment:
            raise ConfigError(
                f"storage URL {url!r} has a query or fragment; s3:// takes none. "
                "Use --s3-endpoint-url, --aws-region and --s3-addressing-style instead"
            )
        unknown = sorted(set(options) - {"max_pool_connections", "read_only", "client"})
        if unknown:
            raise ConfigError(
                f"storage URL {url!r} does not take option(s) {', '.join(unknown)}; accepted: "
                "endpoint_url, region, addressing_style, check, max_pool_connections"
            )
        storage = cls(
            parsed.netloc,
            parsed.path,
            endpoint_url=endpoint_url,
            region=region,
            addressing_style=addressing_style or "auto",
            **options,
        )
        if check:
            storage.check()
        return storage

    def check(self) -> None:
        """Raise ConfigError unless the bucket exists and this machine may use it."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = http_status(exc)
            if status == 404 or error_code(exc) in ("NoSuchBucket", "404"):
                raise ConfigError(
                    f"S3 bucket {self.bucket!r} does not exist at {self._endpoint()}; create it "
                    "(deploy/aws/dlaas.yaml does) or fix the bucket name in --storage"
                ) from None
            if status == 403:
                raise ConfigError(
                    f"access to S3 bucket {self.bucket!r} was denied; the IAM role needs "
                    "s3:ListBucket on it, and s3:GetObject/PutObject/DeleteObject on its keys"
                ) from None
            raise ConfigError(
                f"cannot use S3 bucket {self.bucket!r}: {describe_error(exc)}"
            ) from None
        except BotoCoreError as exc:
            raise ConfigError(
                f"cannot reach S3 at {self._endpoint()} for bucket {self.bucket!r}: "
                f"{describe_error(exc)}"
            ) from None

    def probe_atomic_create(self, key: str) -> bool:
        """Write the fresh ``key`` twice with ``If-None-Match: *``; a store that lets the
        second write succeed ignores the header. Sets and returns ``atomic_create``."""
        try:
            try:
                first = self.put_if_absent(key, b"1")
                second = self.put_if_absent(key, b"2")
            finally:
                self.delete(key)
        except StorageError as exc:
            log.warning("s3_conditional_put_probe_failed", extra={"error": str(exc)})
            return self.atomic_create
        self.atomic_create = first and not second
        if not self.atomic_create:
            log.error(
                "s3_conditional_put_ignored",
                extra={
                    "storage": self.url,
                    "endpoint": self._endpoint(),
                    "detail": "this S3 store ignores If-None-Match: *, so two web processes "
                    "can both win one Idempotency-Key; upgrade the store (SeaweedFS >= 4.48, "
                    "MinIO, AWS S3) or run one web process",
                },
            )
        return self.atomic_create

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    # The six primitives ---------------------------------------------------------

    def _put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("put", key, exc) from exc

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        attempt = 0
        while True:
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*"
                )
                return True
            except ClientError as exc:
                if http_status(exc) == 412 or error_code(exc) == "PreconditionFailed":
                    return False
                attempt += 1
                conflict = error_code(exc) == "ConditionalRequestConflict"
                if not (conflict or http_status(exc) == 409) or attempt >= _CONFLICT_ATTEMPTS:
                    raise self._error("create", key, exc) from exc
            except BotoCoreError as exc:
                raise self._error("create", key, exc) from exc
            time.sleep(random.uniform(0.5, 1.0) * min(0.02 * 2**attempt, 1.0))

    def _get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            body: bytes = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._error("get", key, exc) from exc
        return body

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if error_code(exc) in _NOT_FOUND or http_status(exc) == 404:
                return False
            raise self._error("check", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("check", key, exc) from exc
        return True

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if error_code(exc) in _NOT_FOUND:
                return  # some S3-compatible stores answer 404; S3 itself answers 204
            raise self._error("delete", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("delete", key, exc) from exc

    def _delete_many(self, keys: Sequence[str]) -> None:
        """DeleteObjects, 1,000 keys a request (S3's limit): one round trip per batch."""
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            objects = [{"Key": self.prefix + key} for key in chunk]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._error("delete", chunk[0], exc) from exc
            errors = [e for e in answer.get("Errors", ()) if e.get("Code") not in _NOT_FOUND]
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {len(errors)} of {len(chunk)} objects in {self.url}, "
                    f"first {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}; "
                    "check the credentials' s3:DeleteObject permission"
                )

    def _list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", ()):
                    key = str(item["Key"])[len(self.prefix) :]
                    # Some S3-compatible stores list directory markers ("a/"): not objects.
                    if key and not key.endswith("/"):
                        yield key
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list", prefix or "(all)", exc) from exc

    def _list_page(self, prefix: str, start_after: str, limit: int) -> list[str]:
        """ListObjectsV2 from ``StartAfter``, in the store's order (S3's is key order)."""
        page: list[str] = []
        after = self.prefix + start_after if start_after else ""
        while len(page) < limit:
            request: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": self.prefix + prefix,
                "MaxKeys": min(1000, limit - len(page)),
            }
            if after:
                request["StartAfter"] = after
            try:
                answer = self.client.list_objects_v2(**request)
            except (BotoCoreError, ClientError) as exc:
                raise self._error("list", prefix or "(all)", exc) from exc
            contents = answer.get("Contents", ())
            for item in contents:
                key = str(item["Key"])[len(self.prefix) :]
                if key and not key.endswith("/"):
                    page.append(key)
            if not contents or not answer.get("IsTruncated"):
                break
            after = str(contents[-1]["Key"])
        return page

    def _put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """Spooled to a temporary file past 8 MB, then one upload (multipart when large):
        memory stays flat however many lines a job's output has."""
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
            try:
                self.client.upload_fileobj(spool, self.bucket, self.prefix + key)
            except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
                raise self._error("put", key, exc) from exc

    # Errors -------------------------------------------------------------------------

    def _error(self, action: str, key: str, exc: BaseException) -> StorageError:
        where = f"{self.url}/{key}" if self.prefix else f"s3://{self.bucket}/{key}"
        code = error_code(exc)
        if code in _NOT_FOUND or (action == "get" and http_status(exc) == 404):
            return ObjectNotFound(f"no object stored under key {key!r} in {self.url}")
        if code == "NoSuchBucket" and self.read_only:  # a source whose bucket went away
            return ObjectNotFound(f"the bucket of {self.url} is gone (reading {key!r})")
        if code == "NoSuchBucket":
            return StorageError(
                f"S3 bucket {self.bucket!r} does not exist (while trying to {action} {where}); "
                "create it or fix --storage"
            )
        return StorageError(f"S3 {action} of {where} failed: {describe_error(exc)}")

    def _endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", None) or "AWS")
