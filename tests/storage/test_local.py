"""LocalStorage: the conformance suite, plus atomic writes and on-disk behaviour."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dlaas.errors import ConfigError, ObjectNotFound, StorageError
from dlaas.storage import open_source, open_storage
from dlaas.storage.base import Storage
from dlaas.storage.local import LocalStorage

from .conformance import SourceConformance, StorageConformance


class TestLocalStorage(StorageConformance):
    @pytest.fixture(params=[False, True], ids=["no-fsync", "fsync"])
    def storage(self, request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
        return LocalStorage(tmp_path / "objects", fsync=request.param)


class TestLocalSource(SourceConformance):
    @pytest.fixture
    def fill(self, tmp_path: Path) -> Callable[[str, bytes], None]:
        def write(key: str, data: bytes) -> None:
            path = tmp_path / "photos" / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        (tmp_path / "photos").mkdir()
        return write

    @pytest.fixture
    def source(self, fill: Callable[[str, bytes], None], tmp_path: Path) -> Storage:
        return open_source(f"file://{tmp_path / 'photos'}/")


def test_a_missing_source_folder_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        open_source(f"file://{tmp_path / 'nothing'}/")
    assert not (tmp_path / "nothing").exists()


def test_a_source_never_reads_through_a_link_out_of_its_folder(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").symlink_to(tmp_path / "secret")
    source = open_source(f"file://{tmp_path / 'photos'}")
    assert source.list_page(limit=10) == []  # links are not objects of a folder
    with pytest.raises(ObjectNotFound, match="outside"):
        source.get("cat.jpg")


# Each version of the object is one repeated byte, so any mix of two versions shows.
_READER = """
import json, sys, time
from dlaas.errors import ObjectNotFound
from dlaas.storage.local import LocalStorage

storage, key = LocalStorage(sys.argv[1]), sys.argv[2]
size, run_s = int(sys.argv[3]), float(sys.argv[4])
reads, torn, versions = 0, 0, set()
print("ready", flush=True)
end = time.monotonic() + run_s
while time.monotonic() < end:
    try:
        data = storage.get(key)
    except ObjectNotFound:
        torn += 1  # the key exists throughout; a rename must never hide it
        continue
    reads += 1
    if len(data) != size or data.count(data[:1]) != size:
        torn += 1
    versions.add(data[0])
print(json.dumps({"reads": reads, "torn": torn, "versions": len(versions)}))
"""


def test_reader_in_another_process_never_sees_a_partial_object(tmp_path: Path) -> None:
    # given: a big object and a reader process hammering it
    size = 2 * 1024 * 1024
    storage = LocalStorage(tmp_path)
    storage.put("big/object", bytes([0]) * size)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(tmp_path), "big/object", str(size), "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"
    # when: this process overwrites it again and again
    writes = 0
    while reader.poll() is None:
        writes += 1
        storage.put("big/object", bytes([writes % 256]) * size)
    out, _ = reader.communicate(timeout=30)
    report = json.loads(out)
    # then: every read saw one whole version, and reads did overlap many writes
    assert reader.returncode == 0
    assert report["torn"] == 0
    assert report["reads"] > 10 and writes > 10
    assert report["versions"] > 1, "reads never overlapped a write; the test proved nothing"


def test_list_never_shows_a_write_in_progress(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    stop = threading.Event()
    seen: set[str] = set()

    def lister() -> None:
        while not stop.is_set():
            seen.update(storage.list())

    thread = threading.Thread(target=lister)
    thread.start()
    try:
        for i in range(200):
            storage.put(f"jobs/j{i % 5}.json", os.urandom(64 * 1024))
    finally:
        stop.set()
        thread.join()
    assert seen <= {f"jobs/j{i}.json" for i in range(5)}
    assert sorted(os.listdir(tmp_path / "jobs")) == [f"j{i}.json" for i in range(5)]


_RACER = """
import sys
from dlaas.storage.local import LocalStorage

storage, name, keys = LocalStorage(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # the start signal, so every process races for the same keys at once
won = [k for k in range(keys) if storage.put_if_absent(f"claims/{k}", name.encode() * 4096)]
print(" ".join(map(str, won)))
"""


def test_processes_racing_for_keys_have_exactly_one_winner_each(tmp_path: Path) -> None:
    keys, racers = 200, 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(tmp_path), f"p{n}", str(keys)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(racers)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    wins: dict[int, list[str]] = {}
    outputs = [proc.communicate("go\n", timeout=60)[0] for proc in procs]
    for n, out in enumerate(outputs):
        for key in out.split():
            wins.setdefault(int(key), []).append(f"p{n}")
    assert sorted(wins) == list(range(keys))
    assert all(len(winners) == 1 for winners in wins.values()), wins
    storage = LocalStorage(tmp_path)
    for key, (winner,) in wins.items():
        assert storage.get(f"claims/{key}") == winner.encode() * 4096
    assert not [p for p in tmp_path.rglob("*") if "~" in p.name], "a temp file was left behind"


def test_keys_map_to_files_under_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("inputs/job1/img1", b"jpeg")
    assert (tmp_path / "inputs" / "job1" / "img1").read_bytes() == b"jpeg"


def test_delete_prunes_directories_it_left_empty(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("inputs/job1/a", b"1")
    storage.put("inputs/job1/b", b"2")
    storage.put("inputs/job2/a", b"3")
    storage.delete("inputs/job1/a")
    assert (tmp_path / "inputs" / "job1").is_dir()
    storage.delete("inputs/job1/b")
    assert not (tmp_path / "inputs" / "job1").exists()
    assert (tmp_path / "inputs" / "job2").is_dir()
    storage.delete("inputs/job2/a")
    assert os.listdir(tmp_path) == ["inputs"]  # a folder right under the root stays
    assert os.listdir(tmp_path / "inputs") == []


def test_concurrent_put_and_delete_in_one_directory(tmp_path: Path) -> None:
    """Pruning an emptied directory must not break a put racing into it."""
    storage = LocalStorage(tmp_path)
    errors: list[BaseException] = []

    def churn(name: str) -> None:
        try:
            for _ in range(300):
                storage.put(f"race/dir/{name}", b"x")
                storage.delete(f"race/dir/{name}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(f"k{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert storage.list() == []


def test_stray_files_are_not_listed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("jobs/ok.json", b"{}")
    (tmp_path / "jobs" / ".ok.json~abc.tmp").write_bytes(b"half")  # left by a crash
    (tmp_path / "jobs" / "has space").write_bytes(b"put there by hand")
    assert storage.list() == ["jobs/ok.json"]


def test_key_that_is_also_a_prefix_fails_clearly(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("a/b", b"1")
    with pytest.raises(StorageError, match="collide"):
        storage.put("a", b"2")
    with pytest.raises(StorageError, match="collide"):
        storage.put("a/b/c", b"3")
    assert storage.get("a/b") == b"1"


def test_disk_error_is_a_storage_error_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("jobs/j.json", b"old")

    def disk_full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StorageError, match=r"could not write object 'jobs/j\.json'.*space"):
        storage.put("jobs/j.json", b"new")
    monkeypatch.undo()
    assert storage.get("jobs/j.json") == b"old"
    assert os.listdir(tmp_path / "jobs") == ["j.json"]


# open_storage ---------------------------------------------------------------------


def test_file_url_with_absolute_path_creates_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "new" / "objects"
    storage = open_storage(f"file://{root}")
    assert isinstance(storage, LocalStorage)
    assert root.is_dir()
    assert storage.url == f"file://{root.resolve()}"


def test_file_url_with_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("file://data/objects")
    storage.put("k", b"v")
    assert (tmp_path / "data" / "objects" / "k").read_bytes() == b"v"


def test_file_url_takes_the_fsync_option(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}", fsync=True)
    assert isinstance(storage, LocalStorage) and storage.fsync


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not take option"):
        open_storage(f"file://{tmp_path}", region="x")


def test_file_path_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a directory"):
        open_storage(f"file://{tmp_path / 'plain'}")


def test_file_url_without_a_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="names no directory"):
        open_storage("file://")


@pytest.mark.parametrize("url", ["ftp://host/x", "/just/a/path", "gs://bucket", "memroy://x"])
def test_unknown_scheme_names_the_accepted_ones(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_storage(url)
    message = str(info.value)
    assert url in message
    assert "memory://" in message and "file://" in message and "s3://" in message


def test_s3_without_boto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate an install without the aws extra: importing the s3 backend fails on boto3."""

    class NoBoto3:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name == "dlaas.storage.s3":
                raise ModuleNotFoundError("No module named 'boto3'", name="boto3")

    monkeypatch.delitem(sys.modules, "dlaas.storage.s3", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoBoto3(), *sys.meta_path])
    with pytest.raises(ConfigError, match=r"install dlaas\[aws\]"):
        open_storage("s3://bucket/prefix")
