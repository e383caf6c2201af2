"""Objects as files under one directory (``file://`` URLs).

A key ``inputs/<job>/<image>`` is the file ``<root>/inputs/<job>/<image>``; the base class
has already refused any key that could escape the root. Writes go to a temporary file in
the target directory and are then renamed over the target, which is atomic on POSIX: a
reader opens either the old file or the new one, never half of one. A create-if-absent
hard-links the finished temporary file instead, which fails if the name is taken.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from dlaas.errors import InvalidKey, ObjectNotFound, StorageError
from dlaas.storage.base import Storage

# Temporary names carry a "~", which no valid key segment may contain, so ``list`` can
# never mistake a write in progress for an object.
_TEMP_MARK = "~"
_TEMP_PREFIX = ""
_temp_seq = itertools.count()


def _new_temp_prefix() -> None:
    """Temp names are unique per process: reset at import and in every forked child."""
    global _TEMP_PREFIX, _temp_seq
    _TEMP_PREFIX = f"{os.getpid()}-{secrets.token_hex(3)}-"
    _temp_seq = itertools.count()


_new_temp_prefix()
os.register_at_fork(after_in_child=_new_temp_prefix)
# A put races deletes that prune its emptied directory; each lost race costs one mkdir, and
# under heavy contention five in a row were seen lost (4 threads churning one directory).
_PUT_ATTEMPTS = 20


class LocalStorage(Storage):
    """A directory of files. ``fsync=True`` makes each put durable across power loss (slower)."""

    def __init__(
        self, root: str | os.PathLike[str], *, fsync: bool = False, read_only: bool = False
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.fsync = fsync
        self.read_only = read_only
        self.url = f"file://{self.root}"
        if read_only:  # a source is someone else's folder: never created, only read
            if not self.root.is_dir():
                raise ObjectNotFound(f"no folder {self.root}; check the file:// URL")
            return
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(
                f"storage path {self.root} exists but is not a directory; "
                "point --storage file:///path at a directory"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the storage directory {self.root}: {exc.strerror}; "
                "choose a writable path with --storage file:///path"
            ) from exc

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _put(self, key: str, data: bytes) -> None:
        self._retrying("write", key, lambda path: self._write_atomic(path, data, os.replace))

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        """The whole object is written to a temporary file, then hard-linked to its name:
        ``link`` fails if the name exists, atomically, between processes too (POSIX), and
        the object appears complete or not at all."""
        created = [True]

        def link(temp: Path, path: Path) -> None:
            try:
                os.link(temp, path)
            except FileExistsError:
                if path.is_dir():
                    raise  # a key prefix, not an object: the collision error below
                created[0] = False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                raise StorageError(
                    f"the file system under {self.root} has no hard links, which an atomic "
                    "create-if-absent needs; put --storage on a local disk, or use s3://"
                ) from exc
            finally:
                temp.unlink(missing_ok=True)

        self._retrying("create", key, lambda path: self._write_atomic(path, data, link))
        return created[0]

    def _retrying(self, action: str, key: str, write: Callable[[Path], None]) -> None:
        path = self._path(key)
        # A concurrent delete may prune a parent directory between our mkdir and our write;
        # that shows as a missing or "not a directory" path, and a second try succeeds.
        for attempt in range(_PUT_ATTEMPTS):
            try:
                write(path)
                return
            except (
                FileNotFoundError,
                NotADirectoryError,
                IsADirectoryError,
                FileExistsError,
            ) as exc:
                if attempt < _PUT_ATTEMPTS - 1 and not self._collides(path):
                    continue
                if self._collides(path):
                    raise StorageError(
                        f"cannot write object {key!r}: a key and a key prefix collide on disk; "
                        "use keys that are not prefixes of other keys"
                    ) from exc
                raise self._error(action, key, exc.errno, exc.strerror) from exc
            except OSError as exc:
                raise self._error(action, key, exc.errno, exc.strerror) from exc

    def _collides(self, path: Path) -> bool:
        """True if the key is a directory, or one of its parents is a file."""
        if path.is_dir():
            return True
        return any(parent.is_file() for parent in path.parents if self.root in parent.parents)

    def _write_atomic(self, path: Path, data: bytes, finish: Callable[[Path, Path], None]) -> None:
        """Write ``data`` to a temporary file beside ``path``, then ``finish(temp, path)``
        (``os.replace`` to overwrite, a hard link to create only)."""
        # The web tier writes every upload here, so this path is kept to a few syscalls:
        # the parent directory is created only when the first open says it is missing,
        # and the temp name comes from a counter (O_EXCL still guards against a clash).
        temp = path.with_name(f".{path.name}{_TEMP_MARK}{_TEMP_PREFIX}{next(_temp_seq)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(temp, flags, 0o666)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, flags, 0o666)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            finish(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if self.fsync:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _get(self, key: str) -> bytes:
        path = self._path(key)
        if self.read_only and self.root not in Path(os.path.realpath(path)).parents:
            # A link inside a source may point anywhere: only the folder itself is allowed.
            raise ObjectNotFound(f"{key!r} in {self.url} links outside the folder; not read")
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object stored under key {key!r} in {self.url}") from None
        except OSError as exc:
            raise self._error("read", key, exc.errno, exc.strerror) from exc

    def _exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except OSError as exc:
            raise self._error("check", key, exc.errno, exc.strerror) from exc

    def _delete(self, key: str) -> None:
        if self._unlink(key):
            self._prune(self._path(key).parent)

    def _delete_many(self, keys: Sequence[str]) -> None:
        """Unlink them all, then prune each directory once (a batch shares its job's)."""
        parents = {self._path(key).parent for key in keys if self._unlink(key)}
        for parent in parents:
            self._prune(parent)

    def _unlink(self, key: str) -> bool:
        """Remove the file; False if there was none (or the key is a prefix of others)."""
        try:
            os.unlink(self._path(key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        except OSError as exc:
            raise self._error("delete", key, exc.errno, exc.strerror) from exc
        return True

    def _prune(self, directory: Path) -> None:
        """Remove directories the delete left empty, so finished jobs leave no husks.

        A folder right under the root is kept: it holds a family of keys that comes back
        (``inputs/``), and removing it whenever it empties would cost a folder per object.
        """
        while directory.parent != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or already gone): stop climbing
            directory = directory.parent

    def _list(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest directory the prefix names, then filter by the rest.
        head, _, _ = prefix.rpartition("/")
        start = self._path(head) if head else self.root
        base = head + "/" if head else ""
        try:
            keys = list(self._walk(start, base))
        except OSError as exc:
            raise self._error("list", prefix or "<all>", exc.errno, exc.strerror) from exc
        return (key for key in keys if key.startswith(prefix))

    def _walk(self, directory: Path, base: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if _TEMP_MARK in entry.name:
                continue
            key = base + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key + "/")
            elif entry.is_file(follow_symlinks=False) and self._is_key(key):
                yield key

    def _list_page(self, prefix: str, start_after: str, limit: int) -> list[str]:
        """Walk in key order, skipping whole folders that sort before ``start_after``, and
        stop after ``limit`` keys: a page costs one folder's names, not the whole tree."""
        head, _, _ = prefix.rpartition("/")
        start = self._path(head) if head else self.root
        base = head + "/" if head else ""
        page: list[str] = []
        try:
            for key in self._walk_sorted(start, base, start_after):
                if key.startswith(prefix) and key > start_after:
                    page.append(key)
                    if len(page) == limit:
                        break
        except OSError as exc:
            raise self._error("list", prefix or "<all>", exc.errno, exc.strerror) from exc
        return page

    def _walk_sorted(self, directory: Path, base: str, start_after: str) -> Iterator[str]:
        """Keys under ``directory`` in string order: a folder sorts as its name plus "/",
        which is where every key inside it sorts."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        named = []
        for entry in entries:
            if _TEMP_MARK in entry.name:
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            named.append((base + entry.name + ("/" if is_dir else ""), is_dir, entry))
        named.sort(key=lambda item: item[0])
        for key, is_dir, entry in named:
            if is_dir:
                # Every key inside starts with ``key``: skip the folder if they all sort
                # before the cursor.
                if key < start_after[: len(key)]:
                    continue
                yield from self._walk_sorted(Path(entry.path), key, start_after)
            elif entry.is_file(follow_symlinks=False) and self._is_key(key):
                yield key

    def _put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """Chunks go to a temporary file as they come, then one rename: never whole in memory."""

        def write(path: Path) -> None:
            temp = path.with_name(f".{path.name}{_TEMP_MARK}{_TEMP_PREFIX}{next(_temp_seq)}.tmp")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(temp, "xb") as f:
                    for chunk in chunks:
                        f.write(chunk)
                    if self.fsync:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise

        # One try: a retry could not replay chunks already consumed.
        try:
            write(self._path(key))
        except OSError as exc:
            raise self._error("write", key, exc.errno, exc.strerror) from exc

    def _is_key(self, key: str) -> bool:
        """Files that are not valid keys (put there by hand) are not objects."""
        try:
            self._key(key)
        except InvalidKey:
            return False
        return True

    def _error(self, action: str, key: str, code: int | None, reason: str | None) -> StorageError:
        detail = reason or (os.strerror(code) if code else "unknown error")
        return StorageError(
            f"could not {action} object {key!r} in {self.url}: {detail}; "
            "check that the disk has space and the directory is writable, then retry"
        )
