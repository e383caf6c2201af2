"""The object-store interface.

Backends implement six primitives (``_put``, ``_put_if_absent``, ``_get``, ``_exists``,
``_delete``, ``_list``); key validation and the JSON helpers live here so every backend
gets them for free. A backend with a cheaper bulk delete (one request for many keys)
overrides ``_delete_many``; one that can list a page without listing everything (S3's
``StartAfter``, a sorted directory walk) overrides ``_list_page``; one that can write an
object from chunks without holding it whole overrides ``_put_stream``.

A store opened as a *source* (``read_only``) holds someone else's objects: it refuses
every write, and its keys follow the looser ``validate_source_key`` (a photo library
has spaces and accents in its names); dlaas's own keys never do.
"""

from __future__ import annotations

import builtins
import json
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from dlaas.errors import InvalidKey, StorageError

_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")
MAX_KEY_LENGTH = 512


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key like ``inputs/<job>/<image>``.

    User-supplied filenames never become keys; keys are built from IDs we generate.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"storage key is longer than {MAX_KEY_LENGTH} characters")
    if "\x00" in key:
        raise InvalidKey("storage key contains a NUL byte")
    if key.startswith("/") or key.startswith("\\"):
        raise InvalidKey(f"storage key {key!r} is absolute; use a relative key")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"storage key {key!r} has an empty, '.' or '..' segment")
        if not _SEGMENT.match(segment):
            raise InvalidKey(
                f"storage key {key!r} has characters outside [A-Za-z0-9._=-] in {segment!r}"
            )
    return key


MAX_SOURCE_KEY_LENGTH = 1024  # S3's own limit, in UTF-8 bytes


def validate_source_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key of a source (a user's bucket or folder).

    Any printable character may appear in a segment; what could escape the source's root
    (``..``, an absolute path, NUL, control characters) may not.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("source key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_SOURCE_KEY_LENGTH:
        raise InvalidKey(f"source key is longer than {MAX_SOURCE_KEY_LENGTH} bytes")
    if key.startswith(("/", "\\")):
        raise InvalidKey(f"source key {key!r} is absolute; use a relative key")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in key):
        raise InvalidKey(f"source key {key!r} has a control character")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"source key {key!r} has an empty, '.' or '..' segment")
    return key


def validate_prefix(prefix: str, rule: Callable[[str], str] = validate_key) -> str:
    """A list prefix is a key, a key followed by ``/``, or empty."""
    if prefix == "":
        return prefix
    rule(prefix.rstrip("/"))
    return prefix


class Storage(ABC):
    """A flat object store addressed by ``/``-separated keys.

    ``put`` is atomic: a concurrent ``get`` sees the old object, the new one, or
    ObjectNotFound, never half an object.
    """

    url: str = ""
    # False where the store was seen to ignore create-if-absent (an S3-compatible store
    # without ``If-None-Match``): ``put_if_absent`` then cannot promise one winner.
    atomic_create: bool = True
    # A source: someone else's objects, read and listed, never written (``open_source``).
    read_only: bool = False

    def _key(self, key: str) -> str:
        return validate_source_key(key) if self.read_only else validate_key(key)

    def _writable(self, key: str) -> str:
        if self.read_only:
            raise StorageError(f"{self.url} is a read-only source; dlaas never writes there")
        return validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        self._put(self._writable(key), bytes(data))

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write one object from ``chunks``, atomically, without holding it whole where
        the backend allows (a temporary file, then rename or a multipart upload)."""
        self._put_stream(self._writable(key), chunks)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only if no object has ``key``; True if this call created it.

        Of any number of callers racing for one key, in any number of processes sharing
        the store, exactly one gets True, and a reader never sees a partial object. This
        is what lets several web processes agree on who owns an ``Idempotency-Key``.
        """
        return self._put_if_absent(self._writable(key), bytes(data))

    def get(self, key: str) -> bytes:
        """Return the object; raise ObjectNotFound if there is none."""
        return self._get(self._key(key))

    def exists(self, key: str) -> bool:
        return self._exists(self._key(key))

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key is not an error."""
        self._delete(self._writable(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete every object in ``keys``; missing ones are not an error.

        One call per batch, so a backend can make it one request (S3's DeleteObjects) or
        tidy shared directories once. On failure some keys may be gone and some not.
        """
        if keys:
            self._delete_many([self._writable(key) for key in keys])

    def list(self, prefix: str = "") -> list[str]:
        """Return every key that starts with ``prefix``, sorted."""
        return sorted(self._list(validate_prefix(prefix, self._key)))

    def list_page(
        self, prefix: str = "", *, start_after: str = "", limit: int = 1000
    ) -> builtins.list[str]:
        """Up to ``limit`` keys that start with ``prefix`` and come after ``start_after``
        in the store's listing order: a listing in pages whose only state is the last key
        seen (a cursor). The order is key order here and on S3; an S3-compatible store
        may keep its own (SeaweedFS lists folder by folder), and a cursor follows it."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return self._list_page(validate_prefix(prefix, self._key), start_after, limit)[:limit]

    def probe_atomic_create(self, key: str) -> bool:
        """Check at start-up, by writing the fresh ``key``, that ``put_if_absent`` has one
        winner here (S3-compatible stores may ignore the condition); return
        ``atomic_create``."""
        return self.atomic_create

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, separators=(",", ":")).encode())

    def put_json_if_absent(self, key: str, value: Any) -> bool:
        return self.put_if_absent(key, json.dumps(value, separators=(",", ":")).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release connections; the default has none."""

    @abstractmethod
    def _put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _put_if_absent(self, key: str, data: bytes) -> bool: ...

    @abstractmethod
    def _get(self, key: str) -> bytes: ...

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[str]: ...

    def _delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._delete(key)

    def _list_page(self, prefix: str, start_after: str, limit: int) -> builtins.list[str]:
        """The default lists everything; backends that can seek override it."""
        return sorted(k for k in self._list(prefix) if k > start_after)[:limit]

    def _put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """The default joins the chunks; backends that can spool override it."""
        self._put(key, b"".join(chunks))
