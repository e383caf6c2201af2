"""MemoryStorage: the conformance suite, plus sharing by name within a process."""

from __future__ import annotations

import threading
import uuid

import pytest

from dlaas.storage import open_storage
from dlaas.storage.base import Storage
from dlaas.storage.memory import MemoryStorage

from .conformance import StorageConformance


class TestMemoryStorage(StorageConformance):
    @pytest.fixture
    def storage(self) -> Storage:
        return open_storage(f"memory://{uuid.uuid4().hex}")


def test_same_name_is_the_same_store() -> None:
    name = uuid.uuid4().hex
    first, second = open_storage(f"memory://{name}"), open_storage(f"memory://{name}")
    first.put("k", b"v")
    assert second.get("k") == b"v"
    assert open_storage(f"memory://{uuid.uuid4().hex}").list() == []


def test_url_round_trips() -> None:
    storage = open_storage("memory://shared-store")
    assert isinstance(storage, MemoryStorage)
    assert storage.url == "memory://shared-store"
    assert open_storage(storage.url).url == storage.url


def test_clear_empties_the_named_store() -> None:
    storage = MemoryStorage(uuid.uuid4().hex)
    storage.put("a", b"1")
    storage.clear()
    assert storage.list() == []


def test_concurrent_writers_and_readers() -> None:
    storage = MemoryStorage(uuid.uuid4().hex)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(200):
                storage.put(f"w{n}/{i}", bytes([n]) * 100)
                assert storage.get(f"w{n}/{i}") == bytes([n]) * 100
                storage.list(f"w{n}/")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(storage.list()) == 800
