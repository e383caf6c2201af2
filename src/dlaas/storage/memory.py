"""An in-process object store, for tests and single-process runs.

Stores are registered by name, so every ``MemoryStorage("x")`` in one process sees the
same objects, just as two clients of one bucket would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from dlaas.errors import ObjectNotFound
from dlaas.storage.base import Storage


class _Objects:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, bytes] = {}


_REGISTRY: dict[str, _Objects] = {}
_REGISTRY_LOCK = threading.Lock()


def _objects(name: str) -> _Objects:
    with _REGISTRY_LOCK:
        objects = _REGISTRY.get(name)
        if objects is None:
            objects = _REGISTRY[name] = _Objects()
        return objects


class MemoryStorage(Storage):
    """Objects in a dict; ``put`` swaps in a new ``bytes``, so readers never see half a value."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.url = f"memory://{name}"
        self._objects = _objects(name)

    def _put(self, key: str, data: bytes) -> None:
        with self._objects.lock:
            self._objects.data[key] = data

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        with self._objects.lock:
            if key in self._objects.data:
                return False
            self._objects.data[key] = data
            return True

    def _get(self, key: str) -> bytes:
        with self._objects.lock:
            try:
                return self._objects.data[key]
            except KeyError:
                raise ObjectNotFound(f"no object stored under key {key!r} in {self.url}") from None

    def _exists(self, key: str) -> bool:
        with self._objects.lock:
            return key in self._objects.data

    def _delete(self, key: str) -> None:
        with self._objects.lock:
            self._objects.data.pop(key, None)

    def _list(self, prefix: str) -> Iterator[str]:
        with self._objects.lock:
            keys = [key for key in self._objects.data if key.startswith(prefix)]
        return iter(keys)

    def clear(self) -> None:
        """Drop every object in this named store (tests use it to start fresh)."""
        with self._objects.lock:
            self._objects.data.clear()
