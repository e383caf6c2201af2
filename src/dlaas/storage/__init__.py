"""Object storage, chosen by URL: ``memory://NAME``, ``file:///path`` or ``s3://bucket/prefix``."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

from dlaas.errors import ConfigError, StorageError
from dlaas.storage.base import Storage, validate_key

__all__ = [
    "ACCEPTED_SCHEMES",
    "SOURCE_SCHEMES",
    "Storage",
    "open_source",
    "open_storage",
    "validate_key",
]

ACCEPTED_SCHEMES = ("memory", "file", "s3")
SOURCE_SCHEMES = ("file", "s3")


def open_source(url: str, **options: Any) -> Storage:
    """Open a user's folder or bucket prefix read-only: a job's images stay where they are.

    ``file:///dir/`` must exist (ObjectNotFound otherwise: nothing is created);
    ``s3://bucket/prefix/`` takes the operator's S3 options (endpoint, region), never the
    request's. Keys are relative to the URL and may hold any printable character.
    """
    scheme = urlparse(url).scheme
    if scheme == "file":
        from dlaas.storage.local import LocalStorage

        _refuse_options(url, options, allowed=())
        return LocalStorage(_file_path(url), read_only=True)
    if scheme == "s3":
        return open_storage(url, read_only=True, **options)
    accepted = ", ".join(f"{s}://" for s in SOURCE_SCHEMES)
    raise ConfigError(f"source URL {url!r} has an unknown scheme; accepted: {accepted}")


def open_storage(url: str, **options: Any) -> Storage:
    """Open the store a URL names.

    - ``memory://NAME``: in-process; the same NAME in one process is the same store.
    - ``file:///abs/path`` or ``file://relative/path``: a directory, created if missing.
      Option ``fsync`` (default False) makes each put durable across power loss.
    - ``s3://bucket/prefix``: needs ``dlaas[aws]``; options go to ``S3Storage.from_url``.
    """
    scheme = urlparse(url).scheme
    if scheme == "memory":
        from dlaas.storage.memory import MemoryStorage

        _refuse_options(url, options, allowed=())
        return MemoryStorage(_memory_name(url))
    if scheme == "file":
        from dlaas.storage.local import LocalStorage

        _refuse_options(url, options, allowed=("fsync",))
        try:
            return LocalStorage(_file_path(url), fsync=bool(options.get("fsync", False)))
        except StorageError as exc:
            raise ConfigError(str(exc)) from exc
    if scheme == "s3":
        try:
            from dlaas.storage.s3 import S3Storage
        except ModuleNotFoundError as exc:
            if exc.name not in ("boto3", "botocore"):
                raise
            raise ConfigError(
                f"storage URL {url!r} needs boto3, which is not installed; "
                "install dlaas[aws] (pip install 'dlaas[aws]')"
            ) from exc
        storage: Storage = S3Storage.from_url(url, **options)
        return storage
    accepted = ", ".join(f"{s}://" for s in ACCEPTED_SCHEMES)
    raise ConfigError(f"unknown storage URL {url!r}; accepted schemes: {accepted}")


def _memory_name(url: str) -> str:
    parsed = urlparse(url)
    name = (parsed.netloc + parsed.path).strip("/")
    return name or "default"


def _file_path(url: str) -> str:
    """``file:///abs`` is absolute; ``file://rel/dir`` is relative to the working directory."""
    parsed = urlparse(url)
    path = unquote(parsed.netloc + parsed.path)
    if not path:
        raise ConfigError(f"storage URL {url!r} names no directory; use file:///abs/path")
    return path


def _refuse_options(url: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise ConfigError(
            f"storage URL {url!r} does not take option(s) {', '.join(unknown)}; "
            f"accepted: {accepted}"
        )
