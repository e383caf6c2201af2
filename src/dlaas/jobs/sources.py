"""Where a job over stored images may read and write, and how its keys are paged.

The operator allows roots (``--source-allow s3://bucket/photos/,file:///data/``; an
entry ``alice=s3://bucket/alice/`` is alice's alone); a job's source and output must sit
under one the job's owner may use, or the request is refused before anything is read.
Only the URL comes from the request: the S3 endpoint and credentials are the operator's.

``KeyPages`` pages a source's keys by a cursor that is all the state a listing keeps:
the last key (a prefix, in key order) or the lines read (a manifest file, in its order).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from dlaas.errors import DlaasError, InvalidKey
from dlaas.storage import Storage
from dlaas.storage.base import validate_source_key

SCHEMES = ("s3", "file")
MANIFEST_MAX_BYTES = 64 * 1024 * 1024  # a file of keys is read whole: about a million keys
PAGE_KEYS = 1000


class SourceRefused(DlaasError):
    """A source or output URL is malformed, or not under a root the operator allowed."""


@dataclass(frozen=True)
class AllowedRoot:
    url: str  # normalized, ends with "/"
    owner: str | None  # None: every owner may use it


def parse_allowed(text: str) -> tuple[AllowedRoot, ...]:
    """``--source-allow``'s comma-separated roots, each optionally ``owner=URL``."""
    roots = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        owner, sep, url = entry.partition("=")
        if not sep or "://" in owner:
            owner, url = "", entry
        try:
            roots.append(AllowedRoot(normalize(url, folder=True), owner.strip() or None))
        except SourceRefused as exc:
            raise ValueError(f"--source-allow entry {entry!r}: {exc}") from None
    return tuple(roots)


def normalize(url: str, *, folder: bool) -> str:
    """``url`` in one spelling (``s3://bucket/a/b/``, ``file:///abs/dir/``), or
    SourceRefused: no host, port, user, query or fragment, no ``..``, a real path."""
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES:
        raise SourceRefused(f"{url!r} is not an s3:// or file:// URL")
    if parsed.query or parsed.fragment or parsed.port or parsed.username or "@" in parsed.netloc:
        raise SourceRefused(f"{url!r} may not have a user, port, query or fragment")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceRefused(f"{url!r} names a host; write file:///absolute/path")
        path = os.path.realpath(unquote(parsed.path))  # links and ".." resolved here
        head = f"file://{path.rstrip('/')}"
    else:
        if not parsed.netloc:
            raise SourceRefused(f"{url!r} names no bucket; write s3://bucket/prefix/")
        key = unquote(parsed.path).strip("/")
        if key:
            try:
                validate_source_key(key)
            except InvalidKey as exc:
                raise SourceRefused(f"{url!r}: {exc}") from None
        head = f"s3://{parsed.netloc}/{key}".rstrip("/")
    if folder:
        return head + "/"
    if url.endswith("/"):
        raise SourceRefused(f"{url!r} names a folder; a manifest is a file of keys")
    return head


def check_allowed(url: str, roots: tuple[AllowedRoot, ...], owner: str, *, folder: bool) -> str:
    """The normalized ``url`` if it is under a root ``owner`` may use; else SourceRefused."""
    if not roots:
        raise SourceRefused(
            "jobs over stored images are off on this service; the operator turns them on "
            "with --source-allow (DLAAS_SOURCE_ALLOW), e.g. s3://bucket/photos/,file:///data/"
        )
    clean = normalize(url, folder=folder)
    for root in roots:
        if root.owner in (None, owner) and clean.startswith(root.url):
            return clean
    allowed = ", ".join(r.url for r in roots if r.owner in (None, owner)) or "none"
    raise SourceRefused(f"{url} is not under a root this service allows you (allowed: {allowed})")


def folder_of(url: str) -> str:
    """A manifest's folder: its keys are relative to it."""
    return url.rsplit("/", 1)[0] + "/"


@dataclass
class KeyPages:
    """Pages of a source's keys; ``next_page(cursor)`` returns keys and the new cursor."""

    storage: Storage  # the source folder, read-only
    manifest: Callable[[], bytes] | None = None  # a file of keys instead of a listing
    page_keys: int = PAGE_KEYS
    _lines: list[str] | None = None

    def next_page(self, cursor: str) -> tuple[list[str], str]:
        if self.manifest is None:
            keys = self.storage.list_page(start_after=cursor, limit=self.page_keys)
            return keys, (keys[-1] if keys else cursor)
        lines = self._manifest_lines()
        start = int(cursor or 0)
        chunk = lines[start : start + self.page_keys]
        keys = [k for k in (line.strip() for line in chunk) if k]
        return keys, str(start + len(chunk))

    def more(self, cursor: str) -> bool:
        """Whether a manifest has lines past ``cursor`` (a listing ends on an empty page)."""
        return self.manifest is not None and int(cursor or 0) < len(self._manifest_lines())

    def _manifest_lines(self) -> list[str]:
        if self._lines is None:
            assert self.manifest is not None
            data = self.manifest()
            if len(data) > MANIFEST_MAX_BYTES:
                raise SourceRefused(
                    f"the manifest is {len(data) // 2**20} MB; at most "
                    f"{MANIFEST_MAX_BYTES // 2**20} MB (split it into several jobs)"
                )
            self._lines = data.decode("utf-8", "replace").splitlines()
        return self._lines
