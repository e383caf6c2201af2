"""What every Storage backend must do; a backend is done when this suite passes.

Use it by subclassing and providing a ``storage`` fixture that yields a fresh, empty store:

    class TestLocalStorage(StorageConformance):
        @pytest.fixture
        def storage(self, tmp_path: Path) -> Storage:
            return LocalStorage(tmp_path)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from dlaas.errors import InvalidKey, ObjectNotFound, StorageError
from dlaas.storage.base import Storage

BAD_KEYS = [
    "",
    "..",
    "../escape",
    "inputs/../../etc/passwd",
    "inputs/./x",
    "/abs/path",
    "\\windows",
    "inputs//double",
    "trailing/",
    "nul\x00byte",
    "space in name",
    "uml\u00e4ut",
    "a" * 513,
]


RACERS = 8  # threads racing for one key in the create-if-absent tests
RACE_ROUNDS = 3


class StorageConformance:
    # put / get ----------------------------------------------------------------

    def test_put_then_get_returns_the_bytes(self, storage: Storage) -> None:
        storage.put("inputs/job1/img1", b"hello")
        assert storage.get("inputs/job1/img1") == b"hello"

    def test_binary_bytes_round_trip_exactly(self, storage: Storage) -> None:
        data = bytes(range(256)) * 4 + b"\r\n\x00\xff"
        storage.put("bin/all-bytes", data)
        assert storage.get("bin/all-bytes") == data

    def test_empty_object_is_an_object(self, storage: Storage) -> None:
        storage.put("empty", b"")
        assert storage.get("empty") == b""
        assert storage.exists("empty")
        assert storage.list() == ["empty"]

    def test_overwrite_replaces_the_whole_object(self, storage: Storage) -> None:
        storage.put("k", b"a much longer first version")
        storage.put("k", b"short")
        assert storage.get("k") == b"short"
        assert storage.list() == ["k"]

    def test_large_object_round_trips(self, storage: Storage) -> None:
        data = os.urandom(5 * 1024 * 1024 + 7)
        storage.put("big/blob", data)
        assert storage.get("big/blob") == data

    # missing keys -----------------------------------------------------------------

    def test_get_missing_raises_object_not_found(self, storage: Storage) -> None:
        with pytest.raises(ObjectNotFound) as info:
            storage.get("results/nope/nothing.json")
        # Callers may catch the builtin, or the subsystem error, as they prefer.
        assert isinstance(info.value, FileNotFoundError)
        assert isinstance(info.value, StorageError)
        assert "results/nope/nothing.json" in str(info.value)

    def test_prefix_of_a_key_is_not_an_object(self, storage: Storage) -> None:
        storage.put("jobs/j1/manifest.json", b"{}")
        assert not storage.exists("jobs/j1")
        with pytest.raises(ObjectNotFound):
            storage.get("jobs/j1")

    def test_exists(self, storage: Storage) -> None:
        assert not storage.exists("x/y")
        storage.put("x/y", b"1")
        assert storage.exists("x/y")

    def test_delete_removes_and_is_idempotent(self, storage: Storage) -> None:
        storage.put("d/one", b"1")
        storage.put("d/two", b"2")
        storage.delete("d/one")
        assert not storage.exists("d/one")
        assert storage.get("d/two") == b"2"
        storage.delete("d/one")  # already gone: no error
        storage.delete("never/was")
        assert storage.list() == ["d/two"]

    def test_delete_many_removes_those_named_and_skips_missing(self, storage: Storage) -> None:
        # Given two jobs' inputs
        for job in ("a", "b"):
            for n in range(3):
                storage.put(f"in/{job}/{n}", b"x")

        # When one batch deletes all of a, one of b, and a key that never was
        storage.delete_many(["in/a/0", "in/a/1", "in/a/2", "in/b/1", "in/never/was"])
        storage.delete_many([])

        # Then exactly those are gone, and a's keys can be written again
        assert storage.list() == ["in/b/0", "in/b/2"]
        storage.put("in/a/1", b"again")
        assert storage.get("in/a/1") == b"again"

    def test_delete_many_checks_every_key(self, storage: Storage) -> None:
        storage.put("k/1", b"1")
        with pytest.raises(InvalidKey):
            storage.delete_many(["k/1", "../escape"])
        assert storage.exists("k/1")  # nothing deleted when one key is unsafe

    def test_key_can_be_written_again_after_delete(self, storage: Storage) -> None:
        storage.put("r/x", b"1")
        storage.delete("r/x")
        storage.put("r/x", b"2")
        assert storage.get("r/x") == b"2"

    # list -----------------------------------------------------------------

    def test_list_empty_store(self, storage: Storage) -> None:
        assert storage.list() == []
        assert storage.list("inputs/") == []

    def test_list_by_prefix_is_sorted_and_complete(self, storage: Storage) -> None:
        keys = [
            "inputs/j1/b",
            "inputs/j1/a",
            "inputs/j10/a",
            "inputs/j2/a",
            "results/j1/a.json",
            "jobs/j1.json",
        ]
        for key in keys:
            storage.put(key, key.encode())
        assert storage.list() == sorted(keys)
        assert storage.list("inputs/j1/") == ["inputs/j1/a", "inputs/j1/b"]
        # A prefix is a string prefix, not a directory: "inputs/j1" also matches j10.
        assert storage.list("inputs/j1") == ["inputs/j1/a", "inputs/j1/b", "inputs/j10/a"]
        assert storage.list("jobs/") == ["jobs/j1.json"]
        assert storage.list("results/j1/a.json") == ["results/j1/a.json"]
        assert storage.list("nothing/") == []

    def test_list_many_keys(self, storage: Storage) -> None:
        keys = [f"many/{i:04d}" for i in range(120)]
        for key in keys:
            storage.put(key, b"")
        assert storage.list("many/") == keys

    def test_list_rejects_an_unsafe_prefix(self, storage: Storage) -> None:
        with pytest.raises(InvalidKey):
            storage.list("../")

    # list_page --------------------------------------------------------------

    # Keys whose string order differs from a folder-by-folder walk ("-" and "." sort
    # before "/", "0" after it).
    PAGED_KEYS = ("a-d", "a.c", "a/b", "a/c/d", "a0", "b/x/y", "b0", "c/z")
    key_order = True  # False: the store lists in an order of its own (SeaweedFS)

    def test_list_page_pages_every_key_once(self, storage: Storage) -> None:
        for key in self.PAGED_KEYS:
            storage.put(key, b"")
        seen: list[str] = []
        cursor = ""
        while page := storage.list_page(start_after=cursor, limit=3):
            assert len(page) <= 3
            seen.extend(page)
            cursor = page[-1]
        assert sorted(seen) == sorted(self.PAGED_KEYS) == storage.list()
        if self.key_order:
            assert seen == sorted(self.PAGED_KEYS)

    def test_list_page_by_prefix_and_cursor(self, storage: Storage) -> None:
        for key in self.PAGED_KEYS:
            storage.put(key, b"")
        assert storage.list_page("a/", limit=10) == ["a/b", "a/c/d"]
        assert storage.list_page("a/", start_after="a/b", limit=10) == ["a/c/d"]
        assert storage.list_page("a/", start_after="a/c/d", limit=10) == []
        assert storage.list_page("nothing/", limit=5) == []

    def test_list_page_of_many_keys(self, storage: Storage) -> None:
        keys = [f"many/{n:04d}" for n in range(1203)]  # past S3's 1,000 keys a request
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: storage.put(key, b""), keys))
        first = storage.list_page("many/", limit=1100)
        rest = storage.list_page("many/", start_after=first[-1], limit=1100)
        assert len(first) == 1100 and sorted(first + rest) == keys

    # put_stream -------------------------------------------------------------

    def test_put_stream_writes_the_chunks_as_one_object(self, storage: Storage) -> None:
        chunks = [os.urandom(1024 * 1024 + n) for n in range(6)]
        storage.put_stream("out/job.jsonl", iter(chunks))
        assert storage.get("out/job.jsonl") == b"".join(chunks)
        storage.put_stream("out/job.jsonl", iter([b"short"]))
        assert storage.get("out/job.jsonl") == b"short"
        assert storage.list("out/") == ["out/job.jsonl"]

    # keys -----------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_unsafe_keys_are_refused_everywhere(self, storage: Storage, key: str) -> None:
        for call in (
            lambda: storage.put(key, b"x"),
            lambda: storage.get(key),
            lambda: storage.exists(key),
            lambda: storage.delete(key),
            lambda: storage.put_if_absent(key, b"x"),
        ):
            with pytest.raises(InvalidKey):
                call()
        assert storage.list() == []

    def test_invalid_key_is_a_value_error(self, storage: Storage) -> None:
        with pytest.raises(ValueError, match=r"'\.\.'"):
            storage.put("a/../b", b"x")

    def test_allowed_key_characters(self, storage: Storage) -> None:
        key = "inputs/AZaz09._=-/img_1.v2=x-y"
        storage.put(key, b"ok")
        assert storage.list("inputs/") == [key]

    # create-if-absent ---------------------------------------------------------

    def test_put_if_absent_creates_only_once(self, storage: Storage) -> None:
        assert storage.put_if_absent("claims/k", b"first") is True
        assert storage.put_if_absent("claims/k", b"second") is False
        assert storage.get("claims/k") == b"first"
        assert storage.list() == ["claims/k"]

    def test_put_if_absent_does_not_create_over_a_put(self, storage: Storage) -> None:
        storage.put("claims/k", b"plain")
        assert storage.put_if_absent("claims/k", b"conditional") is False
        assert storage.get("claims/k") == b"plain"

    def test_put_if_absent_creates_again_after_delete(self, storage: Storage) -> None:
        assert storage.put_if_absent("claims/k", b"1")
        storage.delete("claims/k")
        assert storage.put_if_absent("claims/k", b"2")
        assert storage.get("claims/k") == b"2"

    def test_put_if_absent_of_an_empty_object(self, storage: Storage) -> None:
        assert storage.put_if_absent("claims/empty", b"")
        assert not storage.put_if_absent("claims/empty", b"")
        assert storage.get("claims/empty") == b""

    def test_put_json_if_absent(self, storage: Storage) -> None:
        assert storage.put_json_if_absent("claims/j.json", {"n": 1})
        assert not storage.put_json_if_absent("claims/j.json", {"n": 2})
        assert storage.get_json("claims/j.json") == {"n": 1}

    def test_threads_racing_for_one_key_have_exactly_one_winner(self, storage: Storage) -> None:
        for round_no in range(RACE_ROUNDS):
            key = f"race/{round_no}"
            won = race(storage, key, RACERS)
            assert len(won) == 1, f"round {round_no}: racers {won} all created {key}"
            assert storage.get(key) == f"racer-{won[0]}".encode()

    # json helpers -------------------------------------------------------------

    def test_json_round_trip(self, storage: Storage) -> None:
        value = {"job_id": "j1", "images": [{"id": "a", "filename": "caf\u00e9.jpg"}], "n": 1.5}
        storage.put_json("jobs/j1.json", value)
        assert storage.get_json("jobs/j1.json") == value

    def test_json_of_missing_key_raises_object_not_found(self, storage: Storage) -> None:
        with pytest.raises(ObjectNotFound):
            storage.get_json("jobs/missing.json")


def race(storage: Storage, key: str, racers: int) -> list[int]:
    """``racers`` threads call ``put_if_absent(key)`` at one instant; return the winners."""
    start = threading.Barrier(racers)
    won: list[int] = []
    errors: list[BaseException] = []

    def racer(n: int) -> None:
        try:
            start.wait(timeout=10)
            if storage.put_if_absent(key, f"racer-{n}".encode()):
                won.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return won


class SourceConformance:
    """What every backend does when opened as a read-only source (``open_source``).

    Provide ``source``: a read-only store over a folder or prefix that ``writer`` (a
    writable store on the same place) fills.
    """

    ODD_KEYS = ("holiday 2024/IMG 001.jpg", "caf\u00e9/cr\u00e8me.png", "a+b=c&d.jpg")

    def test_source_keys_may_hold_any_printable_character(
        self, source: Storage, fill: Callable[[str, bytes], None]
    ) -> None:
        for key in self.ODD_KEYS:
            fill(key, key.encode())
        assert source.list_page(limit=10) == sorted(self.ODD_KEYS)
        for key in self.ODD_KEYS:
            assert source.get(key) == key.encode()

    def test_source_refuses_every_write(
        self, source: Storage, fill: Callable[[str, bytes], None]
    ) -> None:
        fill("photo.jpg", b"x")
        for write in (
            lambda: source.put("photo.jpg", b"y"),
            lambda: source.put_if_absent("new.jpg", b"y"),
            lambda: source.put_stream("new.jpg", iter([b"y"])),
            lambda: source.delete("photo.jpg"),
            lambda: source.delete_many(["photo.jpg"]),
        ):
            with pytest.raises(StorageError, match="read-only"):
                write()
        assert source.get("photo.jpg") == b"x"

    @pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "nul\x00", "a//b"])
    def test_source_refuses_keys_that_could_escape(self, source: Storage, key: str) -> None:
        with pytest.raises(InvalidKey):
            source.get(key)
